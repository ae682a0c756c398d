// A WebSocket client for spec/gem/fresh_app_test.sh: connects to an Action Cable
// endpoint, subscribes to a channel, then runs a command (the broadcast) and waits for
// a message on the subscription whose data contains the expected text.
//
//   node ws_await_broadcast.mjs URL ORIGIN CHANNEL EXPECTED_TEXT -- COMMAND ARGS...
import { createRequire } from "node:module";
import { spawn } from "node:child_process";

const require = createRequire(new URL("../js/package.json", import.meta.url));
const WebSocket = require("ws");

const sep = process.argv.indexOf("--");
const [url, origin, channel, expected] = process.argv.slice(2, sep);
const command = process.argv.slice(sep + 1);
const identifier = JSON.stringify({ channel });
const timeoutMs = Number(process.env.WS_TIMEOUT_MS || 60000);

const fail = (why) => {
  console.error(`ws client: ${why}`);
  process.exit(1);
};
const timer = setTimeout(() => fail(`no broadcast containing ${JSON.stringify(expected)} within ${timeoutMs} ms`), timeoutMs);

const ws = new WebSocket(url, ["actioncable-v1-json"], { headers: { Origin: origin } });
ws.on("error", (e) => fail(`socket error: ${e.message}`));
ws.on("close", (code) => fail(`socket closed (${code}) before the broadcast arrived`));
ws.on("message", (raw) => {
  const msg = JSON.parse(raw.toString());
  if (msg.type === "ping") return;
  console.log(`ws client: <- ${raw}`);
  if (msg.type === "welcome") {
    ws.send(JSON.stringify({ command: "subscribe", identifier }));
  } else if (msg.type === "reject_subscription") {
    fail("subscription rejected");
  } else if (msg.type === "disconnect") {
    fail(`disconnected: ${raw}`);
  } else if (msg.type === "confirm_subscription") {
    console.log(`ws client: subscribed; running ${command.join(" ")}`);
    const child = spawn(command[0], command.slice(1), { stdio: "inherit" });
    child.on("exit", (code) => {
      if (code !== 0) fail(`${command[0]} exited with ${code}`);
      console.log("ws client: broadcast command done, waiting for the message");
    });
  } else if (msg.identifier === identifier && JSON.stringify(msg.message).includes(expected)) {
    console.log("ws client: got the broadcast");
    clearTimeout(timer);
    ws.removeAllListeners("close");
    ws.close();
    process.exit(0);
  }
});
