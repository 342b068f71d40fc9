"""The HTTP baseline: a bare FastAPI endpoint that parses the same JSON body
and answers it back, served by the same uvicorn configuration as the edge."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.post("/v1/predict")
async def echo(request: Request) -> Response:
    return Response(content=await request.body(), media_type="application/json")


def main() -> None:
    import sys

    import uvicorn

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
