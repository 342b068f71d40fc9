"""Rich renderings of the API's public shapes (``cloud.api.schemas``) and of token
records: they format what they are given and call nothing."""
