"""Exact tile-by-tile execution of a CNN trunk (streaming, Pinckaers et al., TPAMI 2020)."""

from engine.streaming.hooks import StreamHooks
from engine.streaming.module import StreamingModule
from engine.streaming.plan import TilePlan
from engine.streaming.sink import GradientRegion, InputGradientSink
from engine.streaming.sources import CallableSource, RegionSource, TensorSource

__all__ = ["StreamingModule", "StreamHooks", "TilePlan", "InputGradientSink", "GradientRegion", "RegionSource",
           "TensorSource", "CallableSource"]
