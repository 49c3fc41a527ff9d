"""Static (calibrated) vs dynamic INT8 for the ViT-B/32 image tower: speed and fidelity at batch 1.

    python benchmarks/int8_static_vs_dynamic.py   (after benchmarks/cpu_report.py made benchmarks/.work)
"""
import numpy as np, time, onnx, logging
from pathlib import Path
from onnxruntime.quantization import quantize_static, QuantType, QuantFormat, CalibrationDataReader, CalibrationMethod
from onnxruntime.quantization.shape_inference import quant_pre_process
import onnxruntime as ort
logging.getLogger().setLevel(logging.ERROR)
d = Path('benchmarks/.work/ViT-B-32')
ref = np.load(d/'reference.npz')
px = ref['pixel_values']
class R(CalibrationDataReader):
    def __init__(s): s.it = iter([{'pixel_values': px[i:i+1]} for i in range(len(px))])
    def get_next(s): return next(s.it, None)
t=time.time()
quant_pre_process(str(d/'visual.onnx'), str(d / '.v_pre.onnx'), skip_symbolic_shape=False)
print('pre', time.time()-t)
for fmt in (QuantFormat.QOperator, QuantFormat.QDQ):
    t=time.time()
    quantize_static(str(d / '.v_pre.onnx'), str(d / f'.v_static_{fmt.name}.onnx'), R(), quant_format=fmt, per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, op_types_to_quantize=['MatMul','Gemm'], calibrate_method=CalibrationMethod.MinMax, extra_options={'MatMulConstBOnly': True})
    print(fmt.name, 'quant', time.time()-t)
def bench(p):
    so = ort.SessionOptions(); so.intra_op_num_threads = 2
    s = ort.InferenceSession(p, so, providers=['CPUExecutionProvider'])
    x = px[:1]
    for _ in range(5): s.run(None, {'pixel_values': x})
    ts=[]
    for _ in range(40):
        a=time.perf_counter(); s.run(None, {'pixel_values': x}); ts.append(time.perf_counter()-a)
    out = np.concatenate([s.run(None, {'pixel_values': px[i:i+1]})[0] for i in range(len(px))])
    r = ref['image_embeds']
    n = lambda v: v/np.linalg.norm(v, axis=1, keepdims=True)
    return np.median(ts)*1000, np.abs(n(out)-n(r)).mean(), (n(out)*n(r)).sum(1).min()
for p in [str(d/'visual.onnx'), str(d/'visual.int8.onnx'), str(d / '.v_static_QOperator.onnx'), str(d / '.v_static_QDQ.onnx')]:
    print(p, 'p50 %.2f ms  mean|d| %.2e  mincos %.5f' % bench(p))
