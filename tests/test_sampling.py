"""The torch-free module both generate engines share: stop strings and their hold-back, the settings record,
and chat templates (rendered by MiniJinja, checked against jinja2 in transformers' environment)."""

from __future__ import annotations

import pytest
from conftest import bundled_installed

from llmkit import sampling
from llmkit.errors import UsageError
from llmkit.sampling import StopStream, cut_at_stop


def test_cut_at_stop_takes_the_earliest_stop() -> None:
    assert cut_at_stop("a b END c STOP", ("STOP", "END")) == ("a b ", True)
    assert cut_at_stop("nothing here", ("STOP",)) == ("nothing here", False)
    assert cut_at_stop("text", ()) == ("text", False)


def _feed(stream: StopStream, pieces: list[str], *, done_at_end: bool = True) -> tuple[str, bool]:
    text, hit = "", False
    for i, piece in enumerate(pieces):
        text, hit = stream.update(text + piece, done=done_at_end and i == len(pieces) - 1)
        if hit:
            break
    return text, hit


def test_stop_stream_never_shows_part_of_a_stop_string() -> None:
    shown: list[str] = []
    stream = StopStream(("</s>",), shown.append)
    text, hit = _feed(stream, ["Hel", "lo <", "/", "s> more"])
    assert (text, hit) == ("Hello ", True)
    assert "".join(shown) == "Hello "
    assert not any("<" in piece for piece in shown)


def test_stop_stream_holds_back_then_releases_at_the_end() -> None:
    shown: list[str] = []
    stream = StopStream(("STOP",), shown.append)
    stream.update("abcdef")
    assert "".join(shown) == "ab"  # the last 4 characters could still begin "STOP"
    stream.update("abcdefg", done=True)
    assert "".join(shown) == "abcdefg"


def test_stop_stream_finish_shows_what_the_hold_back_kept() -> None:
    shown: list[str] = []
    stream = StopStream(("STOP",), shown.append)
    stream.update("hello world")
    stream.finish("hello world")
    assert "".join(shown) == "hello world"


def test_stop_stream_without_stops_shows_everything_at_once() -> None:
    shown: list[str] = []
    stream = StopStream((), shown.append)
    stream.update("ab")
    stream.update("abcd")
    assert shown == ["ab", "cd"]


def test_settings_record_is_the_set_kwargs_plus_stop_and_seed() -> None:
    s = sampling.build_settings(temperature=0.5, stop=["\n\n"], seed=3, max_new_tokens=7)
    assert sampling.settings_record(s) == {
        "max_new_tokens": 7, "do_sample": True, "num_beams": 1, "num_return_sequences": 1,
        "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
        "temperature": 0.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "stop": ["\n\n"], "seed": 3,
    }
    greedy = sampling.settings_record(sampling.build_settings())
    assert "temperature" not in greedy and greedy["do_sample"] is False


# --- chat templates: MiniJinja's output against jinja2's, on the templates of real chat models -------------------
# (as published on the hub: Llama 3.1, Mistral, Gemma, Qwen 2.5, Phi-3, Zephyr; plus one that uses namespaces,
# Python string methods, filters and slicing.)

TEMPLATES = {
"llama3": """{{- bos_token }}
{%- if custom_tools is defined %}{%- set tools = custom_tools %}{%- endif %}
{%- if not tools_in_user_message is defined %}{%- set tools_in_user_message = true %}{%- endif %}
{%- if not date_string is defined %}{%- if strftime_now is defined %}{%- set date_string = strftime_now("%d %b %Y") %}{%- else %}{%- set date_string = "26 Jul 2024" %}{%- endif %}{%- endif %}
{%- if not tools is defined %}{%- set tools = none %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}{%- else %}{%- set system_message = "" %}{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}""",
"mistral": """{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}{{- bos_token }}{%- for message in loop_messages %}{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}{%- if message['role'] == 'user' %}{%- if loop.first and system_message is defined %}{{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}{%- else %}{{- ' [INST] ' + message['content'] + ' [/INST]' }}{%- endif %}{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token}}{%- else %}{{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}{%- endif %}{%- endfor %}""",
"gemma": """{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}""",
"qwen25": """{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}{%- endif %}{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}{%- else %}{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}{%- for message in messages %}{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}""",
"phi3": """{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}""",
"zephyr": """{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}""",
"ns_strip": """{%- set ns = namespace(found=false) -%}{%- for m in messages -%}{%- if m.role == 'system' -%}{%- set ns.found = true -%}{%- endif -%}{%- endfor -%}{%- if not ns.found -%}{{ 'SYS: default\\n' }}{%- endif -%}{%- for m in messages -%}{{ m.role | upper }}: {{ m.content.strip() }}{% if m.content.startswith('x') %}!{% endif %}{{ '\\n' }}{%- endfor -%}{% for m in messages | selectattr('role', 'equalto', 'user') | list %}[{{ loop.index }}/{{ loop.length }}]{% endfor %}{{ messages | length }}{{ (messages[-1].content | replace('a', 'b'))[:5] }}""",
}

CONVERSATIONS = [
    [{"role": "user", "content": "hi there"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "  x marks   "}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "Café naïve — “quotes” 北京 🙂\n\tend"}],
    [{"role": "user", "content": ""}],
]
TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}


def _jinja2(template: str, messages: list) -> str:
    try:
        return sampling._jinja2_chat_template(template).render(messages=messages, add_generation_prompt=True, **TOKENS)
    except UsageError as exc:
        return f"refused: {exc}"


def _ours(template: str, messages: list) -> str:
    try:
        return sampling.render_chat_template(template, messages, **TOKENS)
    except UsageError as exc:
        return f"refused: {exc}"


def _real_templates() -> dict[str, str]:
    found = dict(TEMPLATES)
    if bundled_installed("smollm2-135m-instruct"):
        from llmkit.engines import llama_cpp

        gguf = llama_cpp.gguf_for("smollm2-135m-instruct")
        assert gguf is not None
        found["smollm2 (bundled GGUF)"] = llama_cpp.read_gguf_info(gguf).chat_template or ""
    return found


@pytest.mark.parametrize("name", sorted(_real_templates()))
def test_minijinja_renders_real_chat_templates_as_jinja2_does(name: str) -> None:
    template = _real_templates()[name]
    assert sampling._minijinja_chat_template(template) is not None  # MiniJinja compiled it: no fallback here
    for messages in CONVERSATIONS:
        assert _ours(template, messages) == _jinja2(template, messages), messages
    assert "refused" not in _ours(template, CONVERSATIONS[0])


def test_raise_exception_is_one_usage_error_on_either_engine() -> None:
    template = TEMPLATES["gemma"]
    system_first = CONVERSATIONS[1]
    assert _ours(template, system_first) == _jinja2(template, system_first) == (
        "refused: the model's chat template refused the prompt: System role not supported")


def test_a_template_minijinja_cannot_render_goes_to_jinja2() -> None:
    # Python's %-formatting of strings: jinja2 runs it, MiniJinja refuses it at render time
    template = "{% for m in messages %}{{ '%s says: %s' % (m.role, m.content) }}{% endfor %}"
    assert sampling._minijinja_chat_template(template) is not None
    assert sampling.render_chat_template(template, [{"role": "user", "content": "hi"}]) == "user says: hi"
    broken = "{% for m in messages %}{{ m.content | no_such_filter }}{% endfor %}"  # neither can render it
    with pytest.raises(Exception, match="no_such_filter"):
        sampling.render_chat_template(broken, [{"role": "user", "content": "hi"}])
