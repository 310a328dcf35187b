// E2B's JavaScript SDK (npm e2b, pinned in .ci/js/package.json, installed by .ci/sdk-venvs)
// against Warren: create with metadata, commands (output, exit codes, a failing one,
// background and kill, stdin), files (write, read, list, remove), a directory watch, a PTY
// round trip, a signed download URL, getInfo, list, setTimeout, kill. Run by
// crates/cli/tests/e2b.rs with
//   E2B_JS_SDK       path of the SDK's dist/index.mjs (ESM ignores NODE_PATH); without it
//                    the bare specifier "e2b" is imported
//   E2B_API_URL, E2B_SANDBOX_URL (both the Warren listener; the second defaults to the
//   first), E2B_API_KEY
// Prints "ok <step>" per step; exits 1 at the first failure.
import assert from "node:assert/strict";

process.env.E2B_SANDBOX_URL ??= process.env.E2B_API_URL;
const { Sandbox, CommandExitError, FileNotFoundError, FileType, FilesystemEventType } = await import(
  process.env.E2B_JS_SDK ?? "e2b"
);
const run = Math.random().toString(16).slice(2, 10);
const ok = (step) => console.log(`ok ${step}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(cond, what, ms = 15000) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(50);
  }
}
// A promise that must settle within `ms` (a "does not hang" bound).
const within = (ms, promise, what) =>
  Promise.race([promise, sleep(ms).then(() => Promise.reject(new Error(`${what}: still pending after ${ms} ms`)))]);
const rejection = async (promise, what) => {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  throw new Error(`${what}: did not fail`);
};

const sb = await Sandbox.create({ metadata: { js: run, team: "evals" }, timeoutMs: 600_000 });
try {
  assert.ok(sb.sandboxId, "a sandbox id");
  assert.equal(await sb.isRunning(), true);
  ok("create");

  const r = await sb.commands.run('echo "hi $FOO"; echo err >&2; whoami; pwd', { envs: { FOO: "js" } });
  assert.equal(r.stdout, "hi js\nuser\n/home/user\n");
  assert.equal(r.stderr, "err\n");
  assert.equal(r.exitCode, 0);
  const lines = [];
  await sb.commands.run("for i in 1 2 3; do echo $i; sleep 0.2; done", { onStdout: (s) => lines.push(s) });
  assert.equal(lines.join(""), "1\n2\n3\n");
  const failed = await rejection(sb.commands.run("echo out; echo bad >&2; exit 3"), "exit 3");
  assert.ok(failed instanceof CommandExitError, `a CommandExitError: ${failed}`);
  assert.equal(failed.exitCode, 3);
  assert.equal(failed.stdout, "out\n");
  assert.equal(failed.stderr, "bad\n");
  assert.equal((await sb.commands.run("whoami", { user: "root", cwd: "/tmp" })).stdout, "root\n");
  assert.equal((await sb.commands.run("echo 'héllo ✓'")).stdout, "héllo ✓\n");
  ok("commands");

  const bg = await sb.commands.run("sleep 30", { background: true });
  assert.ok((await sb.commands.list()).some((p) => p.pid === bg.pid), "listed");
  assert.equal(await sb.commands.kill(bg.pid), true);
  const killed = await within(15000, rejection(bg.wait(), "wait on a killed command"), "wait after kill");
  assert.ok(killed instanceof CommandExitError, `a killed command's wait: ${killed}`);
  await until(async () => !(await sb.commands.list()).some((p) => p.pid === bg.pid), "the killed command leaves the list");
  assert.equal(await sb.commands.kill(bg.pid), false);
  const cat = await sb.commands.run("cat", { background: true, stdin: true });
  await sb.commands.sendStdin(cat.pid, "from js\n");
  await cat.closeStdin();
  assert.equal((await within(15000, cat.wait(), "cat after closeStdin")).stdout, "from js\n");
  ok("background");

  const dir = `/tmp/js-${run}`;
  const info = await sb.files.write(`${dir}/a.txt`, "hello from js ✓");
  assert.equal(info.path, `${dir}/a.txt`);
  assert.equal(await sb.files.read(`${dir}/a.txt`), "hello from js ✓");
  const bytes = new Uint8Array([0, 1, 2, 255]);
  await sb.files.write(`${dir}/b.bin`, bytes.buffer);
  assert.deepEqual(Array.from(await sb.files.read(`${dir}/b.bin`, { format: "bytes" })), [0, 1, 2, 255]);
  await sb.files.write([
    { path: `${dir}/sub/c.txt`, data: "c" },
    { path: `${dir}/d.txt`, data: "d" },
  ]);
  const listed = await sb.files.list(dir);
  assert.deepEqual(listed.map((e) => e.name).sort(), ["a.txt", "b.bin", "d.txt", "sub"]);
  assert.equal(listed.find((e) => e.name === "sub").type, FileType.DIR);
  const stat = await sb.files.getInfo(`${dir}/a.txt`);
  assert.equal(stat.type, FileType.FILE);
  assert.equal(stat.owner, "user");
  assert.equal(stat.size, Buffer.byteLength("hello from js ✓"));
  await sb.files.remove(`${dir}/a.txt`);
  assert.equal(await sb.files.exists(`${dir}/a.txt`), false);
  const missing = await rejection(sb.files.read(`${dir}/a.txt`), "reading a removed file");
  assert.ok(missing instanceof FileNotFoundError, `a FileNotFoundError: ${missing}`);
  ok("files");

  const events = [];
  const watcher = await sb.files.watchDir(dir, (e) => events.push(e), { recursive: true });
  await sb.files.write(`${dir}/w.txt`, "watched");
  await sb.files.write(`${dir}/sub/x.txt`, "nested");
  const has = (type, name) => events.some((e) => e.type === type && e.name === name);
  await until(
    () => has(FilesystemEventType.WRITE, "w.txt") && has(FilesystemEventType.CREATE, "sub/x.txt"),
    `watch events (seen ${JSON.stringify(events)})`,
  );
  await watcher.stop();
  ok("watch");

  let out = "";
  const decoder = new TextDecoder();
  const term = await sb.pty.create({ cols: 80, rows: 24, onData: (d) => (out += decoder.decode(d, { stream: true })) });
  await sb.pty.sendInput(term.pid, new TextEncoder().encode("echo js-$((6*7))\n"));
  await until(() => out.includes("js-42"), `PTY output (got ${JSON.stringify(out)})`);
  await sb.pty.resize(term.pid, { cols: 100, rows: 30 });
  await sb.pty.sendInput(term.pid, new TextEncoder().encode("stty size\nexit\n"));
  const ended = await within(15000, term.wait(), "PTY after exit");
  assert.equal(ended.exitCode, 0);
  assert.ok(out.includes("30 100"), `stty size after resize: ${JSON.stringify(out)}`);
  ok("pty");

  await sb.files.write(`${dir}/signed.txt`, "signed from js");
  const url = await sb.downloadUrl(`${dir}/signed.txt`, { useSignatureExpiration: 120 });
  assert.ok(url.includes("signature="), `a signed URL: ${url}`);
  const got = await fetch(url);
  assert.equal(got.status, 200);
  assert.equal(await got.text(), "signed from js");
  const tampered = url.replace(/signature=v1_./, (m) => (m.endsWith("A") ? m.slice(0, -1) + "B" : m.slice(0, -1) + "A"));
  assert.equal((await fetch(tampered)).status, 401);
  ok("signed_url");

  const sbInfo = await sb.getInfo();
  assert.equal(sbInfo.sandboxId, sb.sandboxId);
  assert.equal(sbInfo.templateId, "base");
  assert.equal(sbInfo.metadata.team, "evals");
  assert.equal(sbInfo.state, "running");
  ok("info");

  const pager = Sandbox.list({ query: { metadata: { js: run } } });
  const ids = [];
  while (pager.hasNext) ids.push(...(await pager.nextItems()).map((s) => s.sandboxId));
  assert.deepEqual(ids, [sb.sandboxId]);
  ok("list");

  await sb.setTimeout(120_000);
  const ahead = new Date((await sb.getInfo()).endAt) - Date.now();
  assert.ok(ahead > 90e3 && ahead < 150e3, `endAt ${ahead} ms ahead`);
  ok("set_timeout");

  assert.equal(await sb.kill(), true);
  assert.equal(await sb.isRunning(), false);
  ok("kill");
} finally {
  await sb.kill().catch(() => {});
}
