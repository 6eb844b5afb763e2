// A sign-up backend in Node submitting to the producer API with the standard fetch and
// FormData, as an integrator would write it. Prints what it got back, as JSON.
//   node submit.mjs API_URL TOKEN PHOTO VIDEO
import { readFile } from "node:fs/promises";
import { basename } from "node:path";

const [url, token, photoPath, videoPath] = process.argv.slice(2);
const auth = { Authorization: `Bearer ${token}` };

async function form(liveness) {
  const f = new FormData();
  f.append("photo", new Blob([await readFile(photoPath)], { type: "image/jpeg" }), basename(photoPath));
  f.append("video", new Blob([await readFile(videoPath)], { type: "video/mp4" }), basename(videoPath));
  f.append("liveness_type", liveness);
  return f;
}

async function post(key, liveness, extra = {}) {
  const resp = await fetch(`${url}/v1/verifications`, {
    method: "POST",
    headers: { ...auth, "Idempotency-Key": key, ...extra },
    body: await form(liveness),
  });
  return { status: resp.status, type: resp.headers.get("content-type"),
           location: resp.headers.get("location"), body: await resp.json() };
}

const created = await post(`node-${Date.now()}`, "SILENT");
const status = await (await fetch(new URL(created.location, url), { headers: auth })).json();
const waited = await post(`node-wait-${Date.now()}`, "SILENT", { Prefer: "wait=20" });
const error = await post(`node-bad-${Date.now()}`, "BLINK");
console.log(JSON.stringify({ created, status, waited, error }));
