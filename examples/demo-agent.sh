#!/bin/sh
# A scripted stand-in for Claude Code, used by `damascus demo` (and a template for
# wiring any other coding agent): Damascus runs it inside the item's worktree with the
# spec on standard input, and reads a Claude-Code-style JSON result from its output.
#
# It writes hello.txt, and follows one kind of guidance from a person to the letter: a
# line "Write FILE with the single line TEXT." in its prompt (an answer to a question)
# writes TEXT into FILE. A story that wants anything else fails its tests, which is how
# the demo shows the path to a blocked item, a human issue, and an answer that unblocks
# it.
prompt=$(cat)
echo hello > hello.txt
date +%s%N > build-stamp.txt
printf '%s\n' "$prompt" |
    sed -n 's/^Write \([A-Za-z0-9_][A-Za-z0-9._-]*\) with the single line \([A-Za-z0-9 ,_-]*\)\.$/\1 \2/p' |
    while read -r file line; do
        printf '%s\n' "$line" > "$file"
    done
printf '%s\n' '{"type":"result","subtype":"success","is_error":false,"num_turns":1,"total_cost_usd":0,"permission_denials":[],"result":"wrote hello.txt"}'
