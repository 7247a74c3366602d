"""`services.teacher_server` and `services.pin_teacher` pick and set up the trainer's teacher client
(a real step against a stock vLLM server: tests/client/test_stock_vllm.py)."""

from __future__ import annotations

from rcsd.client import TeacherClient
from rcsd.client.stock_vllm import StockVLLMTeacher
from rcsd.trainer.config import TrainConfig
from rcsd.trainer.service_calls import ServiceCalls


def _teacher(**services: object) -> object:
    calls = ServiceCalls(TrainConfig(services=services))
    calls.close()
    return calls.teacher


def test_teacher_server_and_pin_reach_the_client():
    rcsd = _teacher()
    assert isinstance(rcsd, TeacherClient) and rcsd.pin_teacher
    unpinned = _teacher(pin_teacher=False)
    assert isinstance(unpinned, TeacherClient) and not unpinned.pin_teacher
    assert isinstance(_teacher(teacher_server="stock_vllm"), StockVLLMTeacher)
