"""The tiny model's chat template: the conversation format of the released Nemotron 3 templates.

Turns are `<|im_start|>role ... <|im_end|>`; tools go into the system turn as a `<tools>` list
of `<function>` entries (name, description, `<parameters>` with one `<parameter>` per
property, `<required>`), followed by the instruction to answer in the `<tool_call>` XML that
`tool_calls` parses (vLLM's qwen3_coder shape). An assistant turn with tool calls renders them
the same way (arguments as a mapping: the server decodes the OpenAI JSON
string first); consecutive `tool` messages share one user turn, each in `<tool_response>`.
Past assistant turns get an empty `<think></think>` unless they carry their reasoning; the
generation prompt opens `<think>\\n`, or closes it at once with thinking off.
"""

CHAT_TEMPLATE = """
{%- set tools = tools if tools is defined and tools else [] -%}
{%- set has_system = messages and messages[0].role == 'system' -%}
{%- set system = (messages[0].content if messages[0].content is string else '') if has_system else none -%}
{%- set turns = messages[1:] if has_system else messages -%}
{%- if system is not none or tools -%}
  {{- '<|im_start|>system\\n' ~ (system or '') -}}
  {%- if tools -%}
    {{- ('\\n\\n' if system else '') ~ '# Tools\\n\\nYou have access to the following functions:\\n\\n<tools>' -}}
    {%- for tool in tools -%}
      {%- set fn = tool.function if tool.function is defined else tool -%}
      {%- set params = fn.parameters if fn.parameters is defined and fn.parameters is mapping else {} -%}
      {{- '\\n<function>\\n<name>' ~ fn.name ~ '</name>' -}}
      {%- if fn.description is defined and fn.description -%}
        {{- '\\n<description>' ~ (fn.description | trim) ~ '</description>' -}}
      {%- endif -%}
      {{- '\\n<parameters>' -}}
      {%- for name, field in (params.properties if params.properties is defined else {}) | items -%}
        {{- '\\n<parameter>\\n<name>' ~ name ~ '</name>' -}}
        {%- if field.type is defined -%}{{- '\\n<type>' ~ (field.type | string) ~ '</type>' -}}{%- endif -%}
        {%- if field.description is defined -%}{{- '\\n<description>' ~ (field.description | trim) ~ '</description>' -}}{%- endif -%}
        {%- if field.enum is defined -%}{{- '\\n<enum>' ~ (field.enum | tojson) ~ '</enum>' -}}{%- endif -%}
        {{- '\\n</parameter>' -}}
      {%- endfor -%}
      {%- if params.required is defined -%}{{- '\\n<required>' ~ (params.required | tojson) ~ '</required>' -}}{%- endif -%}
      {{- '\\n</parameters>\\n</function>' -}}
    {%- endfor -%}
    {{- '\\n</tools>\\n\\nIf you choose to call a function ONLY reply in the following format with NO suffix:\\n\\n'
        ~ '<tool_call>\\n<function=example_function_name>\\n<parameter=example_parameter_1>\\nvalue_1\\n</parameter>\\n'
        ~ '</function>\\n</tool_call>\\n\\nRequired parameters MUST be specified. You may reason before the call, never after it.' -}}
  {%- endif -%}
  {{- '<|im_end|>\\n' -}}
{%- endif -%}
{%- for message in turns -%}
  {%- set content = message.content if message.content is string else '' -%}
  {%- if message.role == 'assistant' -%}
    {{- '<|im_start|>assistant\\n' -}}
    {%- if message.reasoning_content is defined and message.reasoning_content is string and message.reasoning_content -%}
      {{- '<think>\\n' ~ message.reasoning_content ~ '\\n</think>\\n' -}}
    {%- elif '<think>' not in content -%}
      {{- '<think></think>' -}}
    {%- endif -%}
    {{- content | trim -}}
    {%- for call in (message.tool_calls if message.tool_calls is defined and message.tool_calls else []) -%}
      {%- set call = call.function if call.function is defined else call -%}
      {{- ('\\n' if (content | trim) or not loop.first else '') ~ '<tool_call>\\n<function=' ~ call.name ~ '>\\n' -}}
      {%- for name, value in (call.arguments if call.arguments is mapping else {}) | items -%}
        {{- '<parameter=' ~ name ~ '>\\n'
            ~ (value | tojson if value is mapping or (value is iterable and value is not string) else value | string)
            ~ '\\n</parameter>\\n' -}}
      {%- endfor -%}
      {{- '</function>\\n</tool_call>' -}}
    {%- endfor -%}
    {{- '<|im_end|>\\n' -}}
  {%- elif message.role == 'tool' -%}
    {%- if loop.first or loop.previtem.role != 'tool' -%}{{- '<|im_start|>user\\n' -}}{%- endif -%}
    {{- '<tool_response>\\n' ~ content ~ '\\n</tool_response>\\n' -}}
    {%- if loop.last or loop.nextitem.role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}
  {%- else -%}
    {{- '<|im_start|>' ~ message.role ~ '\\n' ~ content ~ '<|im_end|>\\n' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\\n' -}}
  {%- if enable_thinking is defined and not enable_thinking -%}{{- '<think></think>' -}}{%- else -%}{{- '<think>\\n' -}}{%- endif -%}
{%- endif -%}
"""
