// Drives Debian's Firefox ESR for tests/engines over WebDriver BiDi (puppeteer-core: no browser
// download, no geckodriver). One JSON request per line on stdin, one JSON answer per line on
// stdout: {id, op, ...} -> {id, value} or {id, error}. Requests run concurrently.
//   launch {executable}            start Firefox headless; answers its version
//   context                        a new user context (its own cookie jar) -> context id
//   tab {context}                  a new tab in it -> tab id
//   goto {tab, url} | eval {tab, expression} | closeTab {tab} | closeContext {context}
import { createInterface } from "node:readline";
import puppeteer from "puppeteer-core";

let browser = null;
const contexts = new Map();
const tabs = new Map();
let next = 1;

const ops = {
  async launch({ executable }) {
    browser = await puppeteer.launch({
      browser: "firefox",
      executablePath: executable,
      headless: true,
      acceptInsecureCerts: true,
      protocolTimeout: 60_000,
    });
    return await browser.version();
  },
  async context() {
    const id = `c${next++}`;
    contexts.set(id, await browser.createBrowserContext());
    return id;
  },
  async tab({ context }) {
    const id = `t${next++}`;
    const page = await newPage(contexts.get(context));
    page.setDefaultTimeout(20_000);
    tabs.set(id, page);
    return id;
  },
  async goto({ tab, url }) {
    const response = await tabs.get(tab).goto(url, { waitUntil: "load" });
    return response ? response.status() : null;
  },
  async eval({ tab, expression }) {
    return await tabs.get(tab).evaluate(expression);
  },
  async closeTab({ tab }) {
    await tabs.get(tab).close();
    tabs.delete(tab);
    return null;
  },
  async closeContext({ context }) {
    await contexts.get(context).close();
    contexts.delete(context);
    return null;
  },
};

// Firefox now and then discards a tab it is still creating while another tab of the same
// user context navigates ("no such frame", DiscardedBrowsingContextError): create it again.
async function newPage(context) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await context.newPage();
    } catch (error) {
      if (attempt >= 3 || !/no such frame|DiscardedBrowsingContext/.test(String(error))) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

const answer = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);

const lines = createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  const request = JSON.parse(line);
  try {
    const value = await ops[request.op](request);
    answer({ id: request.id, value: value === undefined ? null : value });
  } catch (error) {
    answer({ id: request.id, error: String(error && error.stack ? error.stack : error) });
  }
});
lines.on("close", async () => {
  if (browser) await browser.close().catch(() => {});
  process.exit(0);
});
