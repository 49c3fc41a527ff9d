// node benchmarks/q4_runtimes.cjs MODEL.onnx IDS.json OUT.json: runs input_ids through onnxruntime-node
// and onnxruntime-web (wasm backend, 1 thread) and writes each one's output (or its error) to OUT.json.
const fs = require('fs');
const base = process.env.CLIP_EXPORT_NODE_MODULES ? process.env.CLIP_EXPORT_NODE_MODULES + '/' : require('path').join(__dirname, '..', 'node_modules') + '/';
const [model, idsFile, outFile] = process.argv.slice(2);
const io = JSON.parse(fs.readFileSync(idsFile));
const ids = BigInt64Array.from(io.input_ids.flat().map(BigInt));
const shape = [io.input_ids.length, io.input_ids[0].length];
(async () => {
  const bytes = fs.readFileSync(model); const result = {};
  for (const [name, pkg, opts] of [['onnxruntime-node', 'onnxruntime-node', {}], ['onnxruntime-web-wasm', 'onnxruntime-web', {executionProviders: ['wasm']}]]) {
    const version = require(base + pkg + '/package.json').version;
    try {
      const ort = require(base + pkg);
      if (pkg === 'onnxruntime-web') ort.env.wasm.numThreads = 1;
      const s = await ort.InferenceSession.create(pkg === 'onnxruntime-web' ? new Uint8Array(bytes) : model, opts);
      const r = await s.run({input_ids: new ort.Tensor('int64', ids, shape)});
      const t = r[s.outputNames[0]];
      result[name] = {version, dims: t.dims, data: Array.from(t.data)};
    } catch (e) { result[name] = {version, error: String(e.message || e).slice(0, 600)}; }
  }
  fs.writeFileSync(outFile, JSON.stringify(result));
})();
