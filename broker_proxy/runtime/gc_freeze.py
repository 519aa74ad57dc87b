"""Move what start-up built out of the cyclic collector's sight, once the proxy listens.

Why: each closed connection leaves reference cycles behind (mitmproxy's layers point at their
context and back), and with them the native TLS state and buffers of both sides. The collector
frees those only in a full collection, and CPython runs a full collection only once the objects
awaiting one reach a quarter of all long-lived objects. Start-up leaves ~400,000 of those
(mitmproxy, the policy, the libraries), so ~100,000 objects, hundreds of closed connections and
their TLS buffers, piled up between two full collections, each of which walked the whole heap.
The C heap grew to that peak and kept it (see heap_trim.py).

`gc.freeze()` puts the start-up objects in the permanent generation: a full collection then walks
only what traffic created, and runs once a quarter of *that* awaits it, so a closed connection's
memory is back within a few hundred connections at a few ms per collection. What start-up built is
meant to live as long as the process; if some of it becomes cyclic garbage later (a replaced
policy), it stays, once.
BROKER_PROXY_GC_FREEZE=0 leaves the collector as it is (for comparisons).
"""

from __future__ import annotations

import gc


def freeze_startup_objects(enabled: bool = True) -> bool:
    """Collect, then freeze everything alive now; False (nothing done) if switched off.

    ``enabled`` is RunConfig.gc_freeze ($BROKER_PROXY_GC_FREEZE, read by run_config.py).
    """
    if not enabled:
        return False
    gc.collect()
    gc.freeze()
    return True
