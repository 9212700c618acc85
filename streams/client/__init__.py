"""How applications talk to a flow: the Python client, index progress and the HTTP bridge.

`from streams.client import Client, IndexReceipt` is the public import the README shows; it never pulls in the
stage runtime, the operator commands or the local brokers.
"""
from streams.client.client import Client
from streams.client.receipts import IndexReceipt

__all__ = ["Client", "IndexReceipt"]
