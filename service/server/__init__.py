"""How the worker serves HTTP on aiohttp: the one package that uses aiohttp's private names.

- ``runner.py``: the server assembly, ``AppRunner`` and the connection handler that answers
  aiohttp's own errors in JSON (the worker and the tests serve the app through it);
- ``dispatch.py``: the issuing route, matched before aiohttp's router;
- ``answers.py``: ``JsonAnswer``, every JSON answer, with its plain way for the hot path;
- ``header_timeout.py``: the deadline for each request head (slow clients);
- ``plain.py``: ``PlainAppRunner``, aiohttp's own runner, router and ``prepare``, for
  ``aiohttp_shortcuts = false``: none of the shortcuts above, no private name read.

It stands below the app and imports nothing from the rest of ``service``: the app hands it the
issuing route, the answer to aiohttp's own errors and the head deadline when it builds its
runner (``service.app.app_runner``). tests/service/test_server_fence.py keeps it so.

The rest of the service uses aiohttp's public API only. Every private name these modules rely
on is listed in tests/service/test_aiohttp_private_names.py, which fails naming the name and
the module when an aiohttp release changes one.

aiohttp is pinned (pyproject.toml) to the minor version CI tests, from the release the test's
fingerprints were read on. Before a new version is allowed: run that test on it, and read the
new source of each routine it lists as copied (meanwhile it can ship with the shortcuts off).
``dispatch.issuing_first`` is a copy of ``Application._handle`` for one route, and a check
added there would be skipped silently by the copy (aiohttp 4's ``_handle`` adds one,
``_pre_handler_error``); the test's fingerprint of that source fails until someone has read it.
"""
