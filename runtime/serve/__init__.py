"""Serving: one engine loaded once behind Triton Inference Server (PyTriton) or Ray Serve.

``batching`` is what both servers share (request checks, groups by plan, bucket padding,
per-request seeds); ``triton`` and ``ray`` bind it to each server; ``client`` speaks the KServe v2
JSON protocol for the tests and tools. The servers need the ``serve`` extra (``pip install
'varrt[serve]'``); nothing here imports them at module level.
"""
