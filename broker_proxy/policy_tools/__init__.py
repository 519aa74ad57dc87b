"""Policy as code: run a policy's tests, diff two policies, replay an audit log under a policy.

These tools decide with the proxy's own ``Broker.decide`` (``harness.py``) on throwaway parts,
so what they say about a policy is what the proxy would do with it.
"""
