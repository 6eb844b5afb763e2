"""Faithful simulator of Tencent's side for faceid-batch: FaceID VideoLivenessCompare + COS.

Shares no code with ``faceid_batch``: it verifies signatures with its own implementation, so a
signing bug in the client cannot be agreed on by both sides.

    running = faceid_sim.start(secret_id="AKID...", secret_key="...")
    running.api_url, running.cos_domain, running.control_url, running.sim, running.stop()
"""

from faceid_sim.control import Simulator
from faceid_sim.cos_store import CosStore
from faceid_sim.runner import RunningSimulator, start

__all__ = ["CosStore", "RunningSimulator", "Simulator", "start"]
