"""A local stand-in for KServe's `kserve-sklearnserver` runtime, built on the same kserve SDK.

`kserve-sklearnserver` is an image, not a PyPI package. This does what that runtime does — download
the model directory, require exactly one *.pkl|*.joblib|*.pickle, joblib.load it, answer V1 and V2 —
so the transformer talks to the same protocol and parsing code on one machine as in the cluster.
"""
