"""`llamactl serve`: an OpenAI-compatible HTTP adapter over the engine.

schema.py     the OpenAI request and response models (pydantic)
errors.py     OpenAI error objects with their HTTP statuses
auth.py       the API key check (constant time)
tools.py      tool-call parsing and the grammar that forces a call
scheduler.py  the bounded queue and the decoding thread over llamactl.engine.batch's slots
app.py        the Starlette application: routes, body limit, access log
server.py     binding, uvicorn, the one stdout line, graceful shutdown

Nothing here is imported by `llamactl --help`: the CLI imports it inside the verb.
"""
