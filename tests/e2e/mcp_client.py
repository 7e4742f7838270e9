"""Drives `tether mcp serve` with the official Python MCP SDK client (`mcp` on PyPI), as an
AI agent's MCP client would: connect (newest protocol both sides know), list the tools, call
them. Prints one JSON object with what it saw; tests/e2e/mcp.rs checks it.

    python mcp_client.py TETHER SOCKET HOST
"""

import json
import subprocess
import sys

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters


def dump(result):
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


async def main(tether, socket, host):
    params = StdioServerParameters(command=tether, args=["--socket", socket, "mcp", "serve"])
    seen = {}
    async with Client(params) as c:
        seen["protocol_version"] = c.protocol_version
        tools = (await c.list_tools()).tools
        seen["tools"] = {
            t.name: t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools
        }
        seen["hosts_list"] = dump(await c.call_tool("hosts_list", {}))
        seen["hosts_show_unknown"] = dump(await c.call_tool("hosts_show", {"name": "nope"}))

        progress = []

        async def on_progress(done, total, message):
            progress.append([done, total, message])

        seen["exec_ok"] = dump(
            await c.call_tool(
                "exec",
                {"selector": f"host:{host}", "command": "echo hello-from-mcp"},
                progress_callback=on_progress,
            )
        )
        seen["exec_progress"] = progress
        seen["exec_exit3"] = dump(
            await c.call_tool("exec", {"selector": f"host:{host}", "command": "echo out; exit 3"})
        )
        seen["exec_denied"] = dump(
            await c.call_tool("exec", {"selector": f"host:{host}", "command": "reboot now"})
        )
        seen["exec_too_long"] = dump(
            await c.call_tool("exec", {"selector": f"host:{host}", "command": "x" * 9000})
        )
        seen["exec_no_hosts"] = dump(
            await c.call_tool("exec", {"selector": "host:nope", "command": "true"})
        )
        seen["audit_tail"] = dump(
            await c.call_tool("audit_tail", {"limit": 50, "types": ["exec.requested"]})
        )
        seen["vpn_status"] = dump(await c.call_tool("vpn_status", {}))

        # Cancellation: once the remote command runs (the target is on this machine), the client
        # cancels the call; the server must stop the remote command (checked by the test).
        seen["remote_started"] = False
        async with anyio.create_task_group() as tg:

            async def slow():
                await c.call_tool(
                    "exec",
                    {"selector": f"host:{host}", "command": "sleep 4242; echo not-cancelled"},
                )
                seen["slow_finished"] = True

            tg.start_soon(slow)
            for _ in range(150):
                found = subprocess.run(["pgrep", "-f", "sleep 4242"], capture_output=True)
                if found.returncode == 0:
                    seen["remote_started"] = True
                    break
                await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
        seen["cancelled"] = "slow_finished" not in seen
        # The session still works after a cancellation.
        seen["after_cancel"] = dump(
            await c.call_tool("exec", {"selector": f"host:{host}", "command": "echo still-here"})
        )
    print(json.dumps(seen))


anyio.run(main, *sys.argv[1:4])
