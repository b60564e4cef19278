"""Cached pooled features of a frozen backbone: pipelines that wrap a data pipeline and serve features.

`memory.FeaturePipeline` wraps the in-memory pipeline, `streaming.StreamingFeaturePipeline` the streaming
one; both are a train.data.Pipeline (`table.FeatureTable`). train/policy.py decides when to use them.
"""
