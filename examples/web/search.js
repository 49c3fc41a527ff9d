// Rank images by a caption, in the browser. URL parameters (all relative to this server):
//   release=/release/hf   the release's Hugging Face layout (clip-export release writes it)
//   images=a.jpg,b.jpg    image URLs;  caption=…   the query;  ort=, tokenizers=  module URLs
import * as ortModule from "/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import { Tokenizer } from "/node_modules/@huggingface/tokenizers/dist/tokenizers.mjs";

const ort = ortModule.default ?? ortModule;
const params = new URLSearchParams(location.search);
const release = params.get("release") ?? "/release/hf";
const imageUrls = (params.get("images") ?? "").split(",").filter(Boolean);
const status = (text) => { document.getElementById("status").textContent = text; };
ort.env.wasm.wasmPaths = "/node_modules/onnxruntime-web/dist/";
ort.env.wasm.numThreads = 1;

const fetchJson = async (url) => (await fetch(url)).json();
const normalise = (v) => { const n = Math.hypot(...v); return v.map((x) => x / n); };

async function rgbPixels(url) {
  // Decoded RGB, alpha dropped: what the preprocessing graph takes as image_uint8 [H, W, 3].
  const bitmap = await createImageBitmap(await (await fetch(url)).blob(), { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const rgb = new Uint8Array(bitmap.width * bitmap.height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) { rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2]; }
  return new ort.Tensor("uint8", rgb, [bitmap.height, bitmap.width, 3]);
}

const [vision, text, tokenizerJson, tokenizerConfig] = await Promise.all([
  ort.InferenceSession.create(`${release}/onnx/vision_model_preprocessing.onnx`, { executionProviders: ["wasm"] }),
  ort.InferenceSession.create(`${release}/onnx/text_model.onnx`, { executionProviders: ["wasm"] }),
  fetchJson(`${release}/tokenizer.json`),
  fetchJson(`${release}/tokenizer_config.json`),
]);
const tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
status(`embedding ${imageUrls.length} images…`);
const images = [];
for (const url of imageUrls) {
  const out = await vision.run({ image_uint8: await rgbPixels(url) });
  images.push({ url, vector: normalise(Array.from(out.image_embeds.data)) });
}

async function search(caption) {
  // The text graph pads or truncates the ids to the context itself and restores the end-of-text id.
  const ids = tokenizer.encode(caption).ids;
  const out = await text.run({ input_ids: new ort.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]) });
  const query = normalise(Array.from(out.text_embeds.data));
  const ranked = images.map((image) => ({ url: image.url, score: image.vector.reduce((s, x, i) => s + x * query[i], 0) })).sort((a, b) => b.score - a.score);
  document.getElementById("results").replaceChildren(...ranked.map(({ url, score }) => {
    const figure = document.createElement("figure");
    figure.innerHTML = `<img src="${url}" alt=""><figcaption>${url.split("/").pop()}<br>${score.toFixed(4)}</figcaption>`;
    return figure;
  }));
  const ranking = document.getElementById("ranking");
  ranking.textContent = JSON.stringify({ caption, ranking: ranked });
  status(`"${caption}": ${ranked.length} images ranked`);
  document.title = "ranked";
}

const input = document.getElementById("caption");
input.value = params.get("caption") ?? "a photo of a cat";
document.getElementById("form").addEventListener("submit", (event) => { event.preventDefault(); search(input.value); });
await search(input.value);
