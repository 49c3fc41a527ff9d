// Embed captions and images with transformers.js from a clip-export release's hf/ directory,
// the way a user of @huggingface/transformers would: local files only, no hub.
// Run by clip_export.clients: node transformers_embed.mjs NODE_MODULES HF_DIR REQUEST.json → JSON on stdout
//   REQUEST: {"captions": [...], "images": [paths...], "dtype": "fp32",
//             "text_dtypes": [...], "pixel_dtypes": [...], "pixel_values": {"file", "dims"},
//             "preprocessing_dtypes": [...]}
//   captions, images: AutoTokenizer + CLIPTextModelWithProjection and AutoProcessor +
//     CLIPVisionModelWithProjection at `dtype` (what the model card's first table measures).
//   text_dtypes: the text model at each dtype on the same ids → text_variants[dtype].
//   pixel_dtypes: the vision model at each dtype fed the float32 [N, 3, H, W] pixel_values read
//     from `pixel_values.file` (the caller's, so only the file and the feed differ) → pixel_variants.
//   preprocessing_dtypes: vision_model_preprocessing at each dtype fed each image's decoded RGB as
//     image_uint8 [H, W, 3] → preprocessing_variants[dtype] (open_clip's resize inside the graph).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [nodeModules, hfDir, requestPath] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(nodeModules), "clip-export.cjs"));
const { env, AutoTokenizer, AutoProcessor, CLIPTextModelWithProjection, CLIPVisionModelWithProjection, RawImage, Tensor } = require("@huggingface/transformers");
const request = JSON.parse(readFileSync(requestPath, "utf8"));
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = path.dirname(path.resolve(hfDir));
const id = path.basename(path.resolve(hfDir));
const dtype = request.dtype ?? "fp32";
const rows = (tensor) => { const [n, d] = tensor.dims; const data = Array.from(tensor.data); return Array.from({ length: n }, (_, i) => data.slice(i * d, (i + 1) * d)); };
const seconds = (start) => Number(((performance.now() - start) / 1000).toFixed(3));

// Progress for the caller (clip_export.clients): "clip-export-step K N LABEL" on stderr before each model runs.
const totalSteps = [request.captions?.length, request.images?.length].filter(Boolean).length
  + (request.text_dtypes?.length ?? 0) + (request.pixel_dtypes?.length ?? 0) + (request.preprocessing_dtypes?.length ?? 0);
let stepsDone = 0;
const step = (label) => process.stderr.write(`clip-export-step ${++stepsDone} ${totalSteps} ${label}\n`);

const out = { version: JSON.parse(readFileSync(path.join(path.resolve(nodeModules), "@huggingface/transformers/package.json"), "utf8")).version, seconds: {} };
let inputs;
if (request.captions?.length) {
  const start = performance.now();
  step("captions through AutoTokenizer and text_model (fp32)");
  const tokenizer = await AutoTokenizer.from_pretrained(id);
  const text = await CLIPTextModelWithProjection.from_pretrained(id, { dtype, device: "cpu" });
  // What a transformers.js user writes: pad to the context, truncate to it.
  inputs = tokenizer(request.captions, { padding: "max_length", truncation: true });
  out.input_ids = rows(inputs.input_ids).map((r) => r.map(Number));
  out.text_embeds = rows((await text(inputs)).text_embeds);
  out.seconds.text = seconds(start);
}
if (request.images?.length) {
  const start = performance.now();
  step("images through AutoProcessor and vision_model (fp32)");
  const processor = await AutoProcessor.from_pretrained(id);
  const vision = await CLIPVisionModelWithProjection.from_pretrained(id, { dtype, device: "cpu" });
  out.image_embeds = [];
  for (const file of request.images) {
    const image = await RawImage.read(file);
    const inputs = await processor(image);
    out.image_embeds.push(rows((await vision(inputs)).image_embeds)[0]);
  }
  out.seconds.images = seconds(start);
}
// Each variant file by its dtype: load it, embed, keep the rows under out[key][dtype]; time the kind.
const eachVariant = async (key, dtypes, label, Model, options, embed) => {
  if (!dtypes?.length) return;
  const start = performance.now();
  out[key] = {};
  for (const variant of dtypes) {
    step(`${label}, dtype ${variant}`);
    const model = await Model.from_pretrained(id, { ...options, dtype: variant, device: "cpu" });
    out[key][variant] = await embed(model);
  }
  out.seconds[key] = seconds(start);
};
await eachVariant("text_variants", request.text_dtypes, "text_model", CLIPTextModelWithProjection, {}, async (text) => rows((await text(inputs)).text_embeds));
if (request.pixel_dtypes?.length) {
  const { file, dims } = request.pixel_values;
  const bytes = readFileSync(file);
  const pixels = new Tensor("float32", new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4), dims);
  await eachVariant("pixel_variants", request.pixel_dtypes, "vision_model", CLIPVisionModelWithProjection, {}, async (vision) => rows((await vision({ pixel_values: pixels })).image_embeds));
}
if (request.preprocessing_dtypes?.length) {
  // The exact path for a transformers.js user: open_clip's resize, crop and normalisation in the graph.
  // Each image is decoded once, for every dtype.
  const decoded = [];
  for (const file of request.images) decoded.push((await RawImage.read(file)).rgb());
  await eachVariant("preprocessing_variants", request.preprocessing_dtypes, "vision_model_preprocessing", CLIPVisionModelWithProjection, { model_file_name: "vision_model_preprocessing" }, async (vision) => {
    const embeds = [];
    for (const image of decoded) embeds.push(rows((await vision({ image_uint8: new Tensor("uint8", image.data, [image.height, image.width, 3]) })).image_embeds)[0]);
    return embeds;
  });
}
process.stdout.write(JSON.stringify(out));
