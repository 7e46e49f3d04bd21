// Drives the dashboard of a running gate in headless Chromium (Debian's /usr/bin/chromium) with
// playwright-core. e2e_dashboard.rs (and e2e_walkthrough.rs) start the gate, send the mail and
// run this script with:
//   GATE (the admin address's base URL), TOKEN, EXPECT (JSON: what the page must show),
//   SCREENSHOTS (a directory).
// EXPECT: delivered, bounced, queued (the overview's cards), deferred (the recipient of a deferred
// message, retried through the page), domain (a row of the domains table); optional: received and
// deferrals (more cards), reply (texts the deferral shows in the history), queuedAfterRetry (the
// queue card once the page's retry delivered), quarantine (false: no quarantined message to
// release; the default is one).
// Exit status 0 only when every check passed; each failure is printed.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const base = process.env.GATE;
const token = process.env.TOKEN;
const expect = JSON.parse(process.env.EXPECT);
const shots = process.env.SCREENSHOTS;
mkdirSync(shots, { recursive: true });
const DEADLINE_MS = 30000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu'],
});
const failures = [];
const fail = (what) => { failures.push(what); console.error('FAIL: ' + what); };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const pageErrors = [];
  const elsewhere = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(m.text()); });
  // Nothing but the gate: any other request is refused and is a failure.
  await page.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (url.origin !== new URL(base).origin) { elsewhere.push(url.href); return route.abort(); }
    return route.continue();
  });

  // Until `check` returns true, reload the page at `hash` (the gate records asynchronously).
  // Going to the URL the page is already at changes nothing (a fragment navigation to the same
  // fragment fires no hashchange), so each round also reloads: the page draws fresh data.
  const until = async (hash, check, what) => {
    const end = Date.now() + DEADLINE_MS;
    let last = '';
    while (Date.now() < end) {
      await page.goto(base + '/ui/' + hash);
      await page.reload();
      await page.waitForFunction(() => !document.querySelector('#view .status') || document.querySelector('#view .status').textContent !== 'Loading…');
      try { const r = await check(); if (r === true) return true; last = String(r); } catch (e) { last = e.message; }
      await page.waitForTimeout(500);
    }
    fail(what + ' (last seen: ' + last + ')');
    return false;
  };
  const text = async (selector) => (await page.locator(selector).innerText()).trim();

  // A wrong token is refused; the right one signs in.
  await page.goto(base + '/ui/');
  await page.fill('#token', 'not-the-token');
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#signin-error:not(:empty)');
  await page.fill('#token', token);
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#card-delivered');
  // The refused sign-in above logged its 401; from here on, any error in the page is a failure.
  pageErrors.length = 0;

  // The overview's numbers are the mail the test sent.
  await until('#overview', async () => {
    const got = {
      delivered: await text('#card-delivered .value'),
      bounced: await text('#card-bounced .value'),
      queue: await text('#card-queue .value'),
    };
    if (expect.received !== undefined) got.received = await text('#card-received .value');
    if (expect.deferrals !== undefined) got.deferred = await text('#card-deferred .value');
    return (got.delivered === String(expect.delivered) && got.bounced === String(expect.bounced)
      && got.queue === String(expect.queued)
      && (expect.received === undefined || got.received === String(expect.received))
      && (expect.deferrals === undefined || got.deferred === String(expect.deferrals))) || JSON.stringify(got);
  }, `overview shows ${expect.delivered} delivered, ${expect.bounced} bounced, ${expect.queued} queued`
    + (expect.received === undefined ? '' : `, ${expect.received} received`)
    + (expect.deferrals === undefined ? '' : `, ${expect.deferrals} deferred`));
  await page.screenshot({ path: shots + '/overview.png', fullPage: true });

  // The deferred message is found by its recipient, its history read, and it is retried.
  await until('#queue?recipient=' + encodeURIComponent(expect.deferred), async () => {
    const rows = await page.locator('#view tbody tr').count();
    const row = await text('#view tbody tr');
    return (rows === 1 && row.includes(expect.deferred)) || row;
  }, 'the queue shows the deferred message to ' + expect.deferred);
  const queueId = await text('#view tbody tr td[data-key=id]');
  await page.screenshot({ path: shots + '/queue.png', fullPage: true });

  await until('#history?q=' + encodeURIComponent(queueId), async () => {
    const types = await page.locator('.timeline li').evaluateAll((lis) => lis.map((li) => li.dataset.type));
    const deferral = types.includes('deferred')
      ? await text('.timeline li[data-type=deferred]') : '';
    return (types.includes('received') && types.includes('deferred')
      && [].concat(expect.reply ?? []).every((r) => deferral.includes(r))) || types.join(',') + ' ' + deferral;
  }, 'the history of ' + queueId + ' shows its reception and deferral'
    + (expect.reply === undefined ? '' : ' with ' + JSON.stringify(expect.reply)));
  await page.screenshot({ path: shots + '/history.png', fullPage: true });

  await page.goto(base + '/ui/#queue?recipient=' + encodeURIComponent(expect.deferred));
  await page.locator('#view tbody tr button[data-action=retry]').click();
  await page.waitForSelector('#view .status:not(:empty)');
  await until('#overview', async () => {
    const d = await text('#card-delivered .value');
    const q = await text('#card-queue .value');
    return (d === String(expect.delivered + 1)
      && (expect.queuedAfterRetry === undefined || q === String(expect.queuedAfterRetry)))
      || JSON.stringify({ delivered: d, queue: q });
  }, 'the retried message is delivered'
    + (expect.queuedAfterRetry === undefined ? '' : `, ${expect.queuedAfterRetry} left in the queue`));
  await page.screenshot({ path: shots + '/retried.png', fullPage: true });

  // The domains table lists the recipient domain with its counts.
  await until('#domains', async () => {
    const row = page.locator('#view tbody tr', { hasText: expect.domain });
    return (await row.count()) === 1 || 'no row for ' + expect.domain;
  }, 'the domains table lists ' + expect.domain);
  await page.screenshot({ path: shots + '/domains.png', fullPage: true });

  // The quarantined message is released through the page and delivered.
  if (expect.quarantine !== false) {
    await until('#quarantine', async () => (await page.locator('#view tbody tr button[data-action=release]').count()) === 1 || 'no entry',
      'the quarantine lists one message');
    await page.screenshot({ path: shots + '/quarantine.png', fullPage: true });
    await page.locator('#view tbody tr button[data-action=release]').click();
    await until('#overview', async () => {
      const d = await text('#card-delivered .value');
      return d === String(expect.delivered + 2) || d;
    }, 'the released message is delivered');
    await page.screenshot({ path: shots + '/after.png', fullPage: true });
  }

  for (const p of ['#pools', '#throttles', '#bounces', '#suppression']) {
    await page.goto(base + '/ui/' + p);
    await page.waitForSelector('#view h2');
    const error = await page.locator('#view .status.error').count();
    if (error) fail(p + ': ' + await text('#view .status.error'));
  }
  await page.screenshot({ path: shots + '/pools.png', fullPage: true });

  if (pageErrors.length) fail('errors in the page: ' + pageErrors.join('; '));
  if (elsewhere.length) fail('the page asked for other origins: ' + elsewhere.join(', '));
} catch (e) {
  fail('the script stopped: ' + (e && e.stack || e));
} finally {
  await browser.close();
}
if (failures.length) process.exit(1);
console.log('dashboard: every check passed');
