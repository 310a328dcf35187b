// The OpenSandbox JavaScript SDK (npm @alibaba-group/opensandbox, pinned in .ci/sdk-venvs)
// against Warren: create, commands (failing, streamed, background), files, metrics,
// pause/resume, renew, list, kill. Run by crates/cli/tests/opensandbox.rs with
//   OPENSANDBOX_JS_SDK  path of the SDK's dist/index.js (ESM ignores NODE_PATH)
//   OPEN_SANDBOX_DOMAIN, OPEN_SANDBOX_API_KEY, WARREN_OS_IMAGE  as for sdk_e2e.py
// Prints "ok <step>" per step; exits 1 at the first failure.
import assert from "node:assert/strict";

const { ConnectionConfig, Sandbox, SandboxManager } = await import(process.env.OPENSANDBOX_JS_SDK);
const config = new ConnectionConfig({
  domain: process.env.OPEN_SANDBOX_DOMAIN,
  apiKey: process.env.OPEN_SANDBOX_API_KEY,
});
const run = Math.random().toString(16).slice(2, 10);
const ok = (step) => console.log(`ok ${step}`);

const sb = await Sandbox.create({
  connectionConfig: config,
  image: process.env.WARREN_OS_IMAGE,
  timeoutSeconds: 600,
  env: { G: "hi" },
  metadata: { js: run },
  resource: { cpu: "1", memory: "512Mi" },
});
try {
  const info = await sb.getInfo();
  assert.equal(info.status.state, "Running");
  ok("create");

  const failed = await sb.commands.run("echo $G; echo err >&2; exit 3");
  assert.deepEqual(failed.logs.stdout.map((m) => m.text).join(""), "hi\n");
  assert.deepEqual(failed.logs.stderr.map((m) => m.text).join(""), "err\n");
  assert.equal(failed.exitCode, 3);
  const lines = [];
  await sb.commands.run('for i in 1 2 3; do echo "Count $i"; sleep 0.1; done', undefined, {
    onStdout: (m) => lines.push(m.text),
  });
  assert.deepEqual(lines, ["Count 1\n", "Count 2\n", "Count 3\n"]);
  ok("commands");

  await sb.files.createDirectories([{ path: "/tmp/demo", mode: 755 }]);
  await sb.files.writeFiles([{ path: "/tmp/demo/hello.txt", data: "Hello World", mode: 644 }]);
  assert.equal(await sb.files.readFile("/tmp/demo/hello.txt"), "Hello World");
  const found = await sb.files.search({ path: "/tmp/demo", pattern: "*.txt" });
  assert.deepEqual(found.map((f) => f.path), ["/tmp/demo/hello.txt"]);
  ok("files");

  const bg = await sb.commands.run("sleep 0.3; echo done", { background: true });
  let status;
  for (let i = 0; i < 100; i++) {
    status = await sb.commands.getCommandStatus(bg.id);
    if (!status.running) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(status.running, false);
  assert.equal(status.exitCode, 0);
  const logs = await sb.commands.getBackgroundCommandLogs(bg.id);
  assert.equal(logs.content, "done\n");
  ok("background");

  const metrics = await sb.getMetrics();
  assert.equal(metrics.cpuCount, 1);
  assert.equal(metrics.memoryTotalMiB, 512);
  ok("metrics");

  await sb.pause();
  const resumed = await sb.resume();
  assert.equal((await resumed.getInfo()).status.state, "Running");
  await resumed.renew(1800);
  const ahead = new Date((await resumed.getInfo()).expiresAt) - Date.now();
  assert.ok(ahead > 1700e3 && ahead < 1900e3, `expiresAt ${ahead} ms ahead`);
  ok("pause_resume_renew");

  const mgr = SandboxManager.create({ connectionConfig: config });
  const list = await mgr.listSandboxInfos({ metadata: { js: run } });
  assert.deepEqual(list.items.map((s) => s.id), [sb.id]);
  ok("list");
} finally {
  await sb.kill();
}
ok("kill");
