"""The request and its verdict: the plain values every part of the core passes around.

What the agent asked for (``OutboundRequest``), the stable error codes, the verdict
(``Allowed`` or ``Denied``) and what it carries for the answer, the one spelling of a path the
policy is matched on, and the model an LLM request asks for. The bottom of the core: imports
nothing of broker_proxy, so the policy, the signer, the approvals and the decision can all
name these without importing each other.
"""
