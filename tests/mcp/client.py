"""An independent MCP client for `damascus mcp`: the official Python SDK (`mcp` on PyPI)
over stdio. Run by crates/damascus/tests/cli/mcp.rs with DAMASCUS_BIN and DATABASE_URL
set; prints one JSON line with what it saw, and exits non-zero on any surprise."""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def structured(result):
    assert not result.is_error, result
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


async def main():
    server = StdioServerParameters(
        command=os.environ["DAMASCUS_BIN"],
        args=["mcp"],
        env={"DATABASE_URL": os.environ["DATABASE_URL"], "PATH": os.environ.get("PATH", "")},
    )
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            tools = sorted(tool.name for tool in (await session.list_tools()).tools)
            ingested = structured(await session.call_tool(
                "ingest_story", {"project": "web", "title": "From Python", "body": "Hello."}))
            listed = structured(await session.call_tool("list_items", {"project": "web"}))
            bad = await session.call_tool("ingest_story", {"project": "ghost", "title": "x"})
            bad_text = " ".join(getattr(block, "text", "") for block in bad.content)
            print(json.dumps({
                "protocol_version": str(init.protocol_version),
                "server": init.server_info.name,
                "tools": tools,
                "ingested_phase": ingested["item"]["phase"],
                "ingested_id": ingested["item"]["id"],
                "listed_titles": [item["title"] for item in listed["items"]],
                "bad_is_error": bool(bad.is_error),
                "bad_text": bad_text,
            }))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as error:  # the Rust test shows this text when it fails
        print(f"python MCP client failed: {error!r}", file=sys.stderr)
        raise
