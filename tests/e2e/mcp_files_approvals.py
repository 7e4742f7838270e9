"""Drives `tether mcp serve` with the official Python MCP SDK client for files and approvals:
fs_write / fs_read round trips, an oversized fs_write, exec held for approval (a pending
handle, then granted by another uid with the real CLI via setpriv, then run), exec waiting with
wait_secs while another uid approves, a denial, and an attempt to approve through MCP.
Prints one JSON object with what it saw; tests/e2e/mcp.rs checks it.

    python mcp_files_approvals.py TETHER SOCKET HOST ROOT APPROVER_TETHER
"""

import base64
import json
import subprocess
import sys

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters


def dump(result):
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


def cli(tether, socket, *args):
    """The real CLI as root (the MCP server's own user)."""
    return subprocess.run([tether, "--socket", socket, *args], capture_output=True, text=True)


def as_uid(approver, socket, uid, *args):
    """The real CLI as another uid (a copy other uids can execute), via setpriv."""
    out = subprocess.run(
        ["setpriv", f"--reuid={uid}", "--regid=0", "--clear-groups", "--",
         approver, "--socket", socket, *args],
        capture_output=True, text=True,
    )
    return {"code": out.returncode, "stdout": out.stdout, "stderr": out.stderr}


async def pending_id(tether, socket, command):
    """The pending approval request for exactly `command`, once the daemon made it."""
    for _ in range(300):
        out = cli(tether, socket, "--json", "approvals", "list", "--state", "pending")
        if out.returncode == 0:
            for a in json.loads(out.stdout)["approvals"]:
                if a.get("command") == command:
                    return a["id"]
        await anyio.sleep(0.1)
    raise RuntimeError(f"no pending approval for {command!r}")


async def main(tether, socket, host, root, approver):
    params = StdioServerParameters(command=tether, args=["--socket", socket, "mcp", "serve"])
    seen = {}
    async with Client(params) as c:
        tools = (await c.list_tools()).tools
        seen["tools"] = {
            t.name: t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools
        }

        # Files: text and binary round trips, a listing, a stat, an oversized write.
        text = "héllo from mcp\nline two\n"
        seen["write_text"] = dump(
            await c.call_tool("fs_write", {"host": host, "path": f"{root}/hello.txt", "content": text})
        )
        seen["read_text"] = dump(await c.call_tool("fs_read", {"host": host, "path": f"{root}/hello.txt"}))
        blob = bytes(range(256)) * 3
        seen["write_bin"] = dump(
            await c.call_tool(
                "fs_write",
                {"host": host, "path": f"{root}/blob.bin", "base64": True, "mode": "600",
                 "content": base64.b64encode(blob).decode()},
            )
        )
        seen["read_bin"] = dump(await c.call_tool("fs_read", {"host": host, "path": f"{root}/blob.bin"}))
        seen["list"] = dump(await c.call_tool("fs_list", {"host": host, "path": root}))
        seen["stat"] = dump(await c.call_tool("fs_stat", {"host": host, "path": f"{root}/blob.bin"}))
        seen["read_missing"] = dump(await c.call_tool("fs_read", {"host": host, "path": f"{root}/nope"}))
        seen["write_big"] = dump(
            await c.call_tool(
                "fs_write",
                {"host": host, "path": f"{root}/big.txt", "content": "x" * (10 * 1024 * 1024 + 1)},
            )
        )

        # Approval: a pending handle, granted by another uid, status, then run with the id.
        cmd1 = f"echo gated one >> {root}/ran1"
        seen["exec_pending"] = dump(
            await c.call_tool("exec", {"selector": f"host:{host}", "command": cmd1})
        )
        id1 = seen["exec_pending"]["structuredContent"]["approval"]
        seen["status_pending"] = dump(await c.call_tool("approvals_status", {"id": id1}))
        seen["approve1"] = as_uid(approver, socket, 4242, "approvals", "approve", id1, "--comment", "fine")
        seen["status_granted"] = dump(await c.call_tool("approvals_status", {"id": id1}))
        seen["exec_approved"] = dump(
            await c.call_tool("exec", {"selector": f"host:{host}", "command": cmd1, "approval": id1})
        )
        seen["status_used"] = dump(await c.call_tool("approvals_status", {"id": id1}))

        # exec with wait_secs: waits with progress while another uid approves, then runs.
        cmd2 = f"echo gated two >> {root}/ran2"
        progress = []

        async def on_progress(done, total, message):
            progress.append([done, total, message])

        async with anyio.create_task_group() as tg:

            async def waiting():
                seen["exec_waited"] = dump(
                    await c.call_tool(
                        "exec",
                        {"selector": f"host:{host}", "command": cmd2, "wait_secs": 60},
                        progress_callback=on_progress,
                    )
                )

            tg.start_soon(waiting)
            id2 = await pending_id(tether, socket, cmd2)
            await anyio.sleep(1.5)
            seen["approve2"] = as_uid(approver, socket, 4243, "approvals", "approve", id2)
        seen["exec_waited_progress"] = progress

        # A denial while exec waits: an isError result with the state; nothing runs.
        cmd3 = f"echo gated three >> {root}/ran3"
        async with anyio.create_task_group() as tg:

            async def denied():
                seen["exec_denied"] = dump(
                    await c.call_tool(
                        "exec", {"selector": f"host:{host}", "command": cmd3, "wait_secs": 60}
                    )
                )

            tg.start_soon(denied)
            id3 = await pending_id(tether, socket, cmd3)
            seen["deny3"] = as_uid(approver, socket, 4242, "approvals", "deny", id3, "--comment", "not today")

        # Approving through MCP: there is no such tool.
        cmd4 = f"echo gated four >> {root}/ran4"
        p4 = dump(await c.call_tool("exec", {"selector": f"host:{host}", "command": cmd4}))
        id4 = p4["structuredContent"]["approval"]
        seen["id4"] = id4
        try:
            seen["approve_via_mcp"] = dump(await c.call_tool("approvals_approve", {"id": id4}))
        except Exception as e:  # a protocol error is as good as an isError result
            seen["approve_via_mcp"] = {"exception": str(e)}
        seen["status4"] = dump(await c.call_tool("approvals_status", {"id": id4}))
    print(json.dumps(seen))


anyio.run(main, *sys.argv[1:6])
