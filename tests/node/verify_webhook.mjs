// A webhook receiver's check, with the published npm standardwebhooks package (written by
// nobody here). Exit 0 and print the payload when the delivery verifies, 1 when it does not.
//   node verify_webhook.mjs SECRET HEADERS_JSON_FILE BODY_FILE
import { readFile } from "node:fs/promises";
import { Webhook } from "standardwebhooks";

const [secret, headersFile, bodyFile] = process.argv.slice(2);
const headers = JSON.parse(await readFile(headersFile, "utf8"));
const body = await readFile(bodyFile, "utf8");
try {
  const payload = new Webhook(secret).verify(body, headers);
  console.log(JSON.stringify(payload));
} catch (err) {
  console.error(`not verified: ${err.message}`);
  process.exit(1);
}
