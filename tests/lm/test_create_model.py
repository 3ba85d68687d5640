"""create_model: one string names a model."""

from __future__ import annotations

import pytest

from conch.errors import ConfigurationError
from conch.lm import AnthropicModel, OpenAIModel, ScriptedModel, create_model

LOCAL = "http://127.0.0.1:9/v1"


@pytest.mark.parametrize(
    ("spec", "kind", "name"),
    [
        ("openai:gpt-4o-mini", OpenAIModel, "gpt-4o-mini"),
        ("gpt-4o-mini", OpenAIModel, "gpt-4o-mini"),
        ("qwen2.5:1.5b", OpenAIModel, "qwen2.5:1.5b"),  # Ollama names hold colons
        ("openai:qwen2.5:1.5b", OpenAIModel, "qwen2.5:1.5b"),
        ("anthropic:claude-sonnet-4-5", AnthropicModel, "claude-sonnet-4-5"),
    ],
)
async def test_specs_pick_the_client_and_the_model(spec: str, kind: type, name: str) -> None:
    model = create_model(spec, base_url=LOCAL, api_key="k", timeout=5)

    assert isinstance(model, kind)
    assert model.model == name
    await model.aclose()


async def test_scripted_spec_builds_a_scripted_model() -> None:
    model = create_model("scripted:demo", replies=["hi"])

    assert isinstance(model, ScriptedModel)
    assert (await model.complete([{"role": "user", "content": "x"}])).text == "hi"
    assert model.model == "demo"


@pytest.mark.parametrize(
    ("spec", "kwargs", "says"),
    [
        ("scripted", {}, "needs replies"),
        ("openai:", {"base_url": LOCAL}, "names no model"),
        ("gpt-4o", {"base_url": LOCAL, "replies": ["x"]}, "only applies to the 'scripted'"),
    ],
)
def test_bad_specs_say_what_to_write(spec: str, kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        create_model(spec, **kwargs)  # type: ignore[arg-type]
