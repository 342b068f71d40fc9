"""``edgeloop replay``: a dataset's rows in file order through the whole loop, scored
prequentially against River's online learners on the same rows."""
