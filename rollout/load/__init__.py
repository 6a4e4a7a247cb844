"""Load generation with Locust in library mode, and the statistics it produces.

`import locust` monkey-patches the process with gevent and must come before
anything that imports ssl or urllib3 (httpx, the kubernetes client): only
`rollout.load.runner` imports it, and the CLI imports that module first in
commands that run load. `rollout.load.stats` is plain data, safe anywhere.
"""
