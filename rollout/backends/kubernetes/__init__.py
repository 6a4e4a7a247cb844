"""The Kubernetes backend: Deployments + a traffic router, state in a ConfigMap, a Lease as lock.

Only `client.py` imports the `kubernetes` package; everything else works on
plain dicts (the API's JSON), so the routers are pure functions and tests
read objects field by field.
"""
