"""medvl.serve.schema: OpenAI chat requests -> medvl conversations, and refusals that name the parameter."""

from __future__ import annotations

import pytest

from medvl.serve.schema import APIError, parse_chat_request


def parts_request(**extra) -> dict:
    return {
        "messages": [
            {"role": "developer", "content": "You are a radiologist."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": "Left or right?"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Left."}]},
            {
                "role": "user",
                "content": [
                    {"type": "volume_url", "volume_url": {"url": "file://ct.nii.gz"}},
                    {"type": "text", "text": "And here?"},
                ],
            },
        ],
        **extra,
    }


def test_content_parts_become_marker_strings_in_template_order() -> None:
    req = parse_chat_request(parts_request(max_completion_tokens=7, max_tokens=99, stop="###", temperature=0))
    assert req.messages == [
        {"role": "system", "content": "You are a radiologist."},
        {"role": "user", "content": "<image>\nLeft or right?"},  # what the chat template renders for the parts
        {"role": "assistant", "content": "Left."},
        {"role": "user", "content": "<volume>\nAnd here?"},
    ]
    assert [(m.kind, m.url, m.param) for m in req.media] == [
        ("image", "data:image/png;base64,AAAA", "messages[1].content[0].image_url.url"),
        ("volume", "file://ct.nii.gz", "messages[3].content[0].volume_url.url"),
    ]
    assert req.max_tokens == 7 and req.max_tokens_param == "max_completion_tokens"
    assert req.stop == ["###"] and not req.do_sample  # temperature 0 is greedy


def test_chat_template_renders_parts_like_the_strings(tiny_processor) -> None:
    """The server's string form of content parts is exactly what the processor's template makes of the parts."""
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Left or right?"}]}]
    req = parse_chat_request(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:,"}},
                        {"type": "text", "text": "Left or right?"},
                    ],
                }
            ]
        }
    )
    assert tiny_processor.apply_chat_template(parts, add_generation_prompt=True) == tiny_processor.apply_chat_template(
        req.messages, add_generation_prompt=True
    )


@pytest.mark.parametrize(
    "body, param, code",
    [
        ([], None, "invalid_json"),
        ({"messages": []}, "messages", "invalid_type"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "invalid_value"),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": []}]},
            "messages[0].tool_calls",
            "unsupported_parameter",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "video_url"}]}]},
            "messages[0].content[0].type",
            "unsupported_content_type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a <volume> b"}]}]},
            "messages[0].content[0].text",
            "marker_media_mismatch",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                    {"role": "user", "content": "q"},
                ]
            },
            "messages[0].content[0]",
            "invalid_value",
        ),
        ({"messages": [{"role": "user", "content": "q"}], "n": 3}, "n", "unsupported_parameter"),
        (
            {"messages": [{"role": "user", "content": "q"}], "frequency_penalty": 0.5},
            "frequency_penalty",
            "unsupported_parameter",
        ),
        ({"messages": [{"role": "user", "content": "q"}], "best_of": 2}, "best_of", "unknown_parameter"),
        ({"messages": [{"role": "user", "content": "q"}], "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"messages": [{"role": "user", "content": "q"}], "max_tokens": 2.5}, "max_tokens", "invalid_type"),
        ({"messages": [{"role": "user", "content": "q"}], "stop": ["a"] * 5}, "stop", "invalid_value"),
        (
            {"messages": [{"role": "user", "content": "q"}], "stream_options": {"include_usage": True}},
            "stream_options",
            "invalid_value",
        ),
    ],
)
def test_refusals_name_the_parameter(body, param, code) -> None:
    with pytest.raises(APIError) as info:
        parse_chat_request(body)
    err = info.value
    assert (err.status, err.param, err.code) == (400, param, code)
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}


def test_neutral_openai_defaults_are_accepted() -> None:
    req = parse_chat_request(
        {
            "messages": [{"role": "user", "content": "q"}],
            "n": 1,
            "logprobs": False,
            "frequency_penalty": 0,
            "response_format": {"type": "text"},
            "user": "u1",
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.7,
            "top_p": 0.9,
            "seed": 3,
        }
    )
    assert req.stream and req.include_usage and req.do_sample and req.seed == 3
