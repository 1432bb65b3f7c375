#!/bin/sh
# A scripted stand-in for Claude Code, used by `damascus demo` (and a template for
# wiring any other coding agent): Damascus runs it inside the item's worktree with the
# spec on standard input, and reads a Claude-Code-style JSON result from its output.
#
# It does one thing: writes hello.txt. A story that wants anything else fails its
# tests, which is how the demo shows the path to a blocked item and a human issue.
cat > /dev/null
echo hello > hello.txt
date +%s%N > build-stamp.txt
printf '%s\n' '{"type":"result","subtype":"success","is_error":false,"num_turns":1,"total_cost_usd":0,"permission_denials":[],"result":"wrote hello.txt"}'
