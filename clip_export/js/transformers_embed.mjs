// Embed captions and images with transformers.js from a clip-export release's hf/ directory,
// the way a user of @huggingface/transformers would: local files only, no hub.
// Run by clip_export.clients: node transformers_embed.mjs NODE_MODULES HF_DIR REQUEST.json → JSON on stdout
//   REQUEST: {"captions": [...], "images": [paths...], "dtype": "fp32"}
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [nodeModules, hfDir, requestPath] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(nodeModules), "clip-export.cjs"));
const { env, AutoTokenizer, AutoProcessor, CLIPTextModelWithProjection, CLIPVisionModelWithProjection, RawImage } = require("@huggingface/transformers");
const request = JSON.parse(readFileSync(requestPath, "utf8"));
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = path.dirname(path.resolve(hfDir));
const id = path.basename(path.resolve(hfDir));
const dtype = request.dtype ?? "fp32";
const rows = (tensor) => { const [n, d] = tensor.dims; const data = Array.from(tensor.data); return Array.from({ length: n }, (_, i) => data.slice(i * d, (i + 1) * d)); };

const out = { version: JSON.parse(readFileSync(path.join(path.resolve(nodeModules), "@huggingface/transformers/package.json"), "utf8")).version };
if (request.captions?.length) {
  const tokenizer = await AutoTokenizer.from_pretrained(id);
  const text = await CLIPTextModelWithProjection.from_pretrained(id, { dtype, device: "cpu" });
  // What a transformers.js user writes: pad to the context, truncate to it.
  const inputs = tokenizer(request.captions, { padding: "max_length", truncation: true });
  out.input_ids = rows(inputs.input_ids).map((r) => r.map(Number));
  out.text_embeds = rows((await text(inputs)).text_embeds);
}
if (request.images?.length) {
  const processor = await AutoProcessor.from_pretrained(id);
  const vision = await CLIPVisionModelWithProjection.from_pretrained(id, { dtype, device: "cpu" });
  out.image_embeds = [];
  for (const file of request.images) {
    const image = await RawImage.read(file);
    const inputs = await processor(image);
    out.image_embeds.push(rows((await vision(inputs)).image_embeds)[0]);
  }
}
process.stdout.write(JSON.stringify(out));
