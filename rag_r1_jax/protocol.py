"""The text protocol between the policy and the rollout engine, defined once.

The policy thinks inside `<think>`, asks for documents with `<search> q1, q2 </search>` and
ends with `<answer> ... </answer>`; the engine appends what it retrieved inside
`<information> ... </information>`. Decoding pauses on the closing search and answer tags.
"""

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
INFORMATION_OPEN, INFORMATION_CLOSE = "<information>", "</information>"

# Every tag, in pairs; tokenizers built for the protocol give each one token.
TAGS = (THINK_OPEN, THINK_CLOSE, SEARCH_OPEN, SEARCH_CLOSE, ANSWER_OPEN, ANSWER_CLOSE,
        INFORMATION_OPEN, INFORMATION_CLOSE)
# Strings that end a decoding turn: a complete search call or a complete answer.
STOP_STRINGS = (SEARCH_CLOSE, ANSWER_CLOSE)
