"""The benchmark's measuring logic (not its speeds): exact ratios from a fake clock, and the CLI."""

import copy
import functools
import json

import pytest
import torch

import timm_aconv
from benchmarks import overhead, steps, timing
from benchmarks.suites import dispatch, gpu, ops
from benchmarks.suites import layer as layer_suite
from benchmarks.suites import model as model_suite

pytestmark = pytest.mark.usefixtures('one_torch_thread')  # main(--threads 1) sets the thread count


@pytest.fixture(autouse=True)
def default_algorithms():
    """Operation counts hold for torch's default mode: deterministic algorithms (a setting another test
    may leave on) fill every new tensor, one more operation each."""
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(False)
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


class FakeClock:
    """A clock that only moves when the timed callables say so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def work(self, seconds: float):
        def run():
            self.now += seconds

        return run


def test_compare_reports_the_interleaved_ratio(monkeypatch):
    clock = FakeClock()
    monkeypatch.setitem(timing.CLOCKS, 'fake', clock)
    result = timing.compare(clock.work(0.03), clock.work(0.02), rounds=5, memory=False, clock='fake')
    assert result.ratio == pytest.approx(1.5) and (result.ratio_q1, result.ratio_q3) == (pytest.approx(1.5),) * 2
    assert result.adaptive_ms == pytest.approx(30.0) and result.ordinary_ms == pytest.approx(20.0)
    assert result.rounds == 5 and result.calls_per_round == 1
    with pytest.raises(ValueError, match='clock must be one of'):
        timing.compare(clock.work(1), clock.work(1), clock='sundial')


def test_cuda_event_clock_sums_the_intervals_between_its_events(monkeypatch):
    class FakeEvent:  # a CUDA event whose time is the fake clock's
        clock = FakeClock()

        def __init__(self, enable_timing=False):
            assert enable_timing

        def record(self):
            self.time = FakeEvent.clock.now

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return (end.time - self.time) * 1e3

    monkeypatch.setattr(torch.cuda, 'Event', FakeEvent)
    clock = timing.CudaEventClock()
    result = timing.compare(
        FakeEvent.clock.work(0.004), FakeEvent.clock.work(0.002), rounds=3, memory=False, clock=clock
    )
    assert result.ratio == pytest.approx(2.0) and result.ordinary_ms == pytest.approx(2.0)
    assert clock() == pytest.approx(FakeEvent.clock.now)


def test_cli_writes_a_table_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(layer_suite, 'LAYER_SHAPES', [(4, 16, 8)])  # the CLI's plumbing, on a tiny layer
    path = tmp_path / 'results.json'
    results = overhead.main(['--suite', 'layer', '--rounds', '1', '--threads', '1', '--json', str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(results))
    cases = results['cases']
    assert len(cases) == len(layer_suite.LAYER_SHAPES) * len(layer_suite.LAYER_SIZES) * 3
    assert all(case['suite'] == 'layer' and case['ratio'] > 0 for case in cases)
    assert '| layer | 4x16x8x8 n=3 train fwd |' in capsys.readouterr().out


def test_count_compute_ops_counts_kernels_not_views_or_allocations():
    x, tensors = torch.randn(4, 4), [torch.randn(3) for _ in range(5)]
    with torch.profiler.profile() as prof:
        y = x.t().unsqueeze(0) * 2  # views: nothing; a multiplication by a Python number: one op (mul)
        torch.empty(3)
        torch._foreach_add_(tensors, 1.0)  # one multi-tensor op (one kernel on a GPU)
        y.sum()
    assert ops.count_compute_ops(prof.events()) == {'aten::mul': 1, 'aten::_foreach_add_': 1, 'aten::sum': 1}


def test_adaptive_layers_add_at_most_the_target_operations_per_training_step():
    """The launch guard: extra compute ops of aconv_resnet20 over conv_resnet20, per adaptive layer,
    in one foreach-SGD training step (forward, backward, optimizer, sigma clamp), kernels computed together
    (as every registered or converted model does). The count does not depend on batch or image size, so a
    small step stands for the benchmark's batch 8 at 32x32 (the ops suite also checks the ungrouped target)."""
    adaptive, ordinary = steps.resnet20_pair(kernel_size=3)
    counts = ops.op_overhead(adaptive, ordinary, batch=2, size=8)
    assert counts['layers'] == 19
    assert counts['extra_ops_per_layer'] <= ops.OPS_PER_LAYER_TARGET, counts['difference']
    # the clamp: two multi-tensor calls for all layers, no per-layer clamp
    assert counts['difference']['aten::_foreach_clamp_min_'] == 1 and 'aten::clamp_' not in counts['difference']


def test_a_count_over_its_target_fails_its_guard_and_the_command_exits_non_zero(tmp_path, monkeypatch, capsys):
    """The ops suite's guards (fake counts): one over its target prints GUARD FAILED, the results keep every
    verdict, and the command exits non-zero after saving them."""

    def op_overhead(adaptive, ordinary, batch, size, grouped=True):
        extra = ops.OPS_PER_LAYER_TARGET + 1 if grouped else ops.OPS_PER_LAYER_UNGROUPED
        return dict(
            batch=batch,
            size=size,
            layers=19,
            grouped=grouped,
            adaptive_ops=100 + 19 * extra,
            ordinary_ops=100,
            extra_ops_per_layer=extra,
            adaptive_cuda_kernels=None,
            ordinary_cuda_kernels=None,
            difference={'aten::mul': 19 * extra},
        )

    monkeypatch.setattr(ops, 'op_overhead', op_overhead)
    path = tmp_path / 'ops.json'
    with pytest.raises(SystemExit, match='1 of 2 guards failed'):
        overhead.main(['--suite', 'ops', '--threads', '1', '--json', str(path)])
    output = capsys.readouterr().out
    case = 'aconv_resnet20 vs conv_resnet20 k=7 b8 32x32'
    assert f'GUARD FAILED: extra operations per adaptive layer of a training step, {case}: 4 (target <= 3)' in output
    assert f'guard ok: extra operations per adaptive layer of a training step, {case}, ungrouped: 30' in output
    assert [guard['passed'] for guard in json.loads(path.read_text())['guards']] == [False, True]


def _dispatch_counts(depth: int, layers: int, group_nodes: int, extra_ops: int, extra_kernels: float, extra_calls: int):
    """Counts of one depth as dispatch_cases reports them (compiled), from what the guards read."""
    return dict(
        case=f'resnet{depth}',
        layers=layers,
        autograd_nodes=dict(default=100 + layers + group_nodes, ungrouped=100 + 12 * layers, ordinary=100),
        extra_ops=extra_ops,
        generated_kernels=dict(default=200 + extra_kernels, ordinary=200),
        kernel_calls=dict(default=40 + extra_calls, ordinary=40),
    )


def test_dispatch_guards_check_each_count_against_its_target():
    """Per depth the kernel group's autograd nodes; from ResNet20 to ResNet56 no more operations and at most
    3.5 more generated kernels per added layer; at ResNet20 no more calls of generated functions."""
    nodes, per_layer = dispatch.GROUP_AUTOGRAD_NODES_TARGET, dispatch.KERNELS_PER_ADDED_LAYER_TARGET
    within = [
        _dispatch_counts(20, 19, nodes, 57, 81, 0),
        _dispatch_counts(56, 55, nodes - 1, 57, 81 + 36 * per_layer, 0),
    ]
    assert [(guard.count, guard.passed) for guard in dispatch.guards(within)] == [
        (nodes, True),
        (nodes - 1, True),
        (0, True),
        (per_layer, True),
        (0, True),
    ]
    over = [_dispatch_counts(20, 19, nodes + 1, 57, 81, 1), _dispatch_counts(56, 55, nodes, 58, 81 + 36 * 4, 13)]
    assert [(guard.count, guard.passed) for guard in dispatch.guards(over)] == [
        (nodes + 1, False),
        (nodes, True),
        (1, False),
        (4, False),
        (1, False),
    ]
    assert 'GUARD FAILED: autograd nodes of the kernel group' in dispatch.guards(over)[0].line()
    eager = [{key: value for key, value in _dispatch_counts(20, 19, nodes, 57, 0, 0).items() if 'kernel' not in key}]
    assert [guard.passed for guard in dispatch.guards(eager)] == [True]  # --no-compile, one depth: the nodes only


TINY_CNN = dict(in_chans=3, img_size=8, kernel_size=3, width=4, hidden_size=8)
TINY_PAIR = gpu.GpuPair('tiny', ('aconv_simple_cnn', TINY_CNN), ('conv_simple_cnn', TINY_CNN), 2, 8)


def test_gpu_suite_runs_on_the_cpu_with_tiny_models(tmp_path, monkeypatch, capsys):
    """The gpu suite's driver (cases, compile, op and kernel counts, JSON, failures) on the CPU: what
    runs on a GPU differs only in the clock (CUDA events), the peak memory and the CUDA graph case."""
    monkeypatch.setattr(gpu, 'GPU_PAIRS', [TINY_PAIR])
    path = tmp_path / 'gpu.json'
    results = overhead.main(
        [
            '--suite',
            'gpu',
            '--device',
            'cpu',
            '--gpu-rounds',
            '1',
            '--compile-backend',
            'eager',
            '--threads',
            '1',
            '--json',
            str(path),
        ]
    )
    assert json.loads(path.read_text()) == json.loads(json.dumps(results))
    assert [case['case'] for case in results['cases']] == [
        'aconv_simple_cnn vs conv_simple_cnn b2 8x8 eager',
        'aconv_simple_cnn vs conv_simple_cnn b2 8x8 eager ungrouped',
        'aconv_simple_cnn vs conv_simple_cnn b2 8x8 compiled',
    ]
    assert all(case['suite'] == 'gpu' and case['ratio'] > 0 for case in results['cases'])
    assert 'torch.compile(eager) warm-up' in results['cases'][2]['note']
    grouped, ungrouped = results['op_counts']
    assert grouped['layers'] == 2 and ungrouped['adaptive_ops'] > grouped['adaptive_ops'] > grouped['ordinary_ops'] > 0
    assert ungrouped['case'] == 'aconv_simple_cnn vs conv_simple_cnn b2 8x8, ungrouped'
    assert results['failures'] == [
        dict(
            case='aconv_simple_cnn vs conv_simple_cnn b2 8x8 cuda graph',
            error='skipped: CUDA graphs need a CUDA device',
        )
    ]
    output = capsys.readouterr().out
    assert (
        '| gpu | aconv_simple_cnn vs conv_simple_cnn b2 8x8 eager |' in output
        and 'extra ops (per layer; per model)' in output
    )


def test_gpu_suite_reports_failing_and_overtime_cases_and_keeps_going(monkeypatch):
    """On a fake clock: a case that raises is reported and the next one runs; a case that runs out of the time
    budget (its alarm raises CaseTimeout) is reported, and the next is skipped, less than MIN_CASE_S being left."""
    monkeypatch.setattr(gpu, 'GPU_PAIRS', [TINY_PAIR])
    monkeypatch.setattr(gpu, 'MIN_CASE_S', 1.0)
    clock = FakeClock()

    def failing_case(pair, mode, *args):
        if mode == 'eager':
            raise RuntimeError('out of memory')
        clock.now += 2.0  # runs until its alarm; the budget left then skips the compiled case (CUDA graphs come last)
        raise gpu.CaseTimeout()

    monkeypatch.setattr(gpu, '_gpu_case', failing_case)
    counts = dict(
        layers=2,
        adaptive_ops=3,
        ordinary_ops=1,
        extra_ops_per_layer=1.0,
        adaptive_cuda_kernels=None,
        ordinary_cuda_kernels=None,
        difference={'aten::mul': 2},
    )
    monkeypatch.setattr(ops, 'op_overhead', lambda *args, **kwargs: counts)
    saved = []
    measure = functools.partial(timing.compare, rounds=1, warmup=0)
    rows, op_rows, failures = gpu.gpu_cases(
        'cpu', measure, time_budget_s=2.5, on_result=lambda: saved.append(1), clock=clock
    )
    assert rows == [] and len(op_rows) == 2 and len(saved) == 4
    assert [failure['error'] for failure in failures] == [
        'RuntimeError: out of memory',
        'time budget used up',
        'skipped: time budget of 2 s used up',
        'skipped: CUDA graphs need a CUDA device',
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message of a machine without a GPU')
def test_cuda_device_without_a_gpu_exits_with_a_message():
    with pytest.raises(SystemExit) as error:
        overhead.main(['--device', 'cuda'])
    assert 'no CUDA GPU is present' in str(error.value.code)
    with pytest.raises(SystemExit):
        overhead.main(['--device', 'tpu'])


def test_train_crop_cases_time_the_windows_they_name(capsys):
    """The model suite's training-crop cases: each adaptive model trains at the window its case names
    (3×3, 5×5) and keeps it through the timed steps; each case times the pairs it prints."""
    for window in model_suite.TRAIN_CROP_SIGMA:
        model = model_suite.train_crop_model(window)
        assert set(timm_aconv_windows(model)) == {(window, window)}
    timed = []

    def measure(adaptive, ordinary, **kwargs):  # one call of each instead of timed rounds
        for _ in range(12):  # past the first reads of sigma (every 10 optimizer steps)
            adaptive()
        ordinary()
        timed.append((adaptive, ordinary))
        return timing.Comparison(2.0, 4.0, 0.5, 0.4, 0.6, 1, 1, float('nan'), float('nan'))

    rows = model_suite.train_crop_cases(measure)
    assert [row['case'] for row in rows] == [
        'train step b32 32x32 at train_crop_tol=0.001 vs conv_resnet20 k=7',
        'train step b32 32x32 at train_crop_tol=0.001 vs conv_resnet20 k=3',
        'reference: conv_resnet20 k=3 vs k=7 train step b32 32x32',
        'train step b32 32x32 at train_crop_tol=0.001 vs conv_resnet20 k=7',
        'train step b32 32x32 at train_crop_tol=0.001 vs conv_resnet20 k=5',
        'reference: conv_resnet20 k=5 vs k=7 train step b32 32x32',
    ]
    assert (
        "training windows ['3x3'], overruns 0" in rows[1]['note']
        and "training windows ['5x5'], overruns 0" in rows[4]['note']
    )
    assert len(timed) == 6 and '| model | reference: conv_resnet20 k=3 vs k=7' in capsys.readouterr().out


def timm_aconv_windows(model):
    import timm_aconv

    return timm_aconv.crop_windows(model).values()


@pytest.mark.parametrize('compile_model', [False, True], ids=['eager', 'compiled'])
def test_sigma_floor_step_trains_plain_weights_and_pays_for_sigma_only(compile_model, monkeypatch):
    """The floor rows' step trains a copy of the model whose layers convolve with their plain weights (the
    group computes no product kernel): the weights train, and every sigma gets a zero gradient, an SGD
    update and the clamp, so it moves only into its bounds; compiled, the forward is the compiled model."""
    adaptive, _ = steps.tiny_resnet_pair(8)
    before = copy.deepcopy(adaptive.state_dict())
    built = {}
    train_step_fn = steps.train_step_fn

    def capture(model, *args, **kwargs):
        built.update(model=model, forward=kwargs.get('forward'))
        return train_step_fn(model, *args, **kwargs)

    monkeypatch.setattr(dispatch, 'train_step_fn', capture)
    computed = []
    compute = timm_aconv.KernelGroup._compute
    monkeypatch.setattr(timm_aconv.KernelGroup, '_compute', lambda group: computed.append(group) or compute(group))
    step = dispatch.sigma_floor_step_fn(adaptive, 1, 8, compile_model=compile_model)
    step()
    step()
    model = built['model']
    assert computed == []
    assert model is not adaptive and all(
        torch.equal(before[key], value) for key, value in adaptive.state_dict().items()
    )
    assert isinstance(built['forward'], torch._dynamo.eval_frame.OptimizedModule) == compile_model
    layers = list(timm_aconv.adaptive_layers(model))
    assert all(not torch.equal(layer.weight, before[f'{name}.weight']) for name, layer in _named_layers(model))
    assert all(torch.equal(layer.sigma.grad, torch.zeros_like(layer.sigma)) for layer in layers)
    # the clamp ran: the tiny twins start below the (1/n, n) bounds
    assert all(
        torch.equal(layer.sigma, before[f'{name}.sigma'].clamp(*layer.sigma_bounds))
        for name, layer in _named_layers(model)
    )


def _named_layers(model):
    return [(name, module) for name, module in model.named_modules() if isinstance(module, timm_aconv.AdaptiveConv2d)]


COVARIANCE_AND_STACK_ROWS = [  # the dispatch suite's rows after those of the twins of each depth
    "resnet20 widths (2, 4, 8) k=3 b1 8x8 covariance_type='diag' vs 'spherical'",
    "resnet20 widths (2, 4, 8) k=3 b1 8x8 covariance_type='full' vs 'spherical'",
    'stack of 10 AdaptiveConv1d vs nn.Conv1d, 4 channels, k=3, input (64,)',
    'stack of 10 AdaptiveConv2d vs nn.Conv2d, 4 channels, k=3, input (8, 8)',
    'stack of 10 AdaptiveConv3d vs nn.Conv3d, 4 channels, k=3, input (4, 4, 4)',
]


def test_dispatch_cases_time_the_pairs_they_name(monkeypatch):
    """The dispatch suite's wiring, without timing or inductor: every row times the pair its label names
    (each step runs), the compiled rows compile the four models they time, and the counts carry the compiled
    step's kernels and calls."""
    compiled_models = []

    def fake_compile(model, **kwargs):
        compiled_models.append(model)
        return model

    monkeypatch.setattr(torch, 'compile', fake_compile)
    monkeypatch.setattr(
        dispatch, 'compiled_step_counts', lambda model, batch, size: dict(generated_kernels=9, kernel_calls=4)
    )
    timed = []

    def measure(adaptive, ordinary, **kwargs):
        adaptive()
        ordinary()
        timed.append((adaptive, ordinary))
        return timing.Comparison(3.0, 2.0, 1.5, 1.4, 1.6, 1, 1, float('nan'), float('nan'))

    rows, counts = dispatch.dispatch_cases(measure, depths=(8,))
    name = 'resnet8 widths (2, 4, 8) k=3 b1 8x8'
    assert [row['case'] for row in rows] == [
        f'{name} default (as registered)',
        f'{name} ungrouped (each layer its own kernel)',
        f'{name} noise floor: ordinary vs ordinary',
        f'{name} floor: sigma parameters only (optimizer update and clamp)',
        f'{name} torch.compile (inductor)',
        f'{name} compiled floor: sigma parameters only (optimizer update and clamp)',
        *COVARIANCE_AND_STACK_ROWS,
    ]
    assert len(timed) == len(rows) and all(row['note'].endswith('+1.000 ms/step') for row in rows)
    # the adaptive model, the ordinary twin, a second twin for the floor, and the floor model
    layers = [
        sum(isinstance(module, timm_aconv.AdaptiveConv2d) for module in model.modules()) for model in compiled_models
    ]
    assert layers == [7, 0, 0, 7]
    assert counts[0]['kernel_calls'] == {'default': 4, 'ordinary': 4} and counts[0]['extra_kernels_per_layer'] == 0
    assert all(guard.passed for guard in dispatch.guards(counts)), [guard.line() for guard in dispatch.guards(counts)]


def test_dispatch_covariance_and_stack_rows_time_the_pairs_they_name(monkeypatch):
    """The dispatch suite's rows of the covariance types and of the 1-D / 2-D / 3-D stacks, without timing: each
    times the pair its label names (each step runs): the tiny ResNet20 with 'diag' / 'full' envelopes against a
    spherical one, ten adaptive layers against ten plain ones of the same dimension (from the same seed) on the
    input the label gives."""
    trained = {}  # step -> (model, input of a stack's step)
    initial = {}  # id of a stack -> the weights of its layers when its step was built
    train_step_fn, square_loss_step_fn = dispatch.train_step_fn, dispatch.square_loss_step_fn

    def train_step(model, **kwargs):
        step = train_step_fn(model, **kwargs)
        trained[step] = (model, None)
        return step

    def square_loss_step(model, x):
        step = square_loss_step_fn(model, x)
        trained[step] = (model, x)
        initial[id(model)] = [layer.weight.detach().clone() for layer in model]
        return step

    monkeypatch.setattr(dispatch, 'train_step_fn', train_step)
    monkeypatch.setattr(dispatch, 'square_loss_step_fn', square_loss_step)
    timed = []

    def measure(adaptive, ordinary, **kwargs):
        adaptive()
        ordinary()
        timed.append((trained[adaptive], trained[ordinary]))
        return timing.Comparison(3.0, 2.0, 1.5, 1.4, 1.6, 1, 1, float('nan'), float('nan'))

    rows, counts = dispatch.dispatch_cases(measure, compile_model=False, depths=())
    assert [row['case'] for row in rows] == COVARIANCE_AND_STACK_ROWS and counts == []
    assert all(row['note'].endswith('+1.000 ms/step') for row in rows)
    for kind, ((adaptive, _), (spherical, _)) in zip(('diag', 'full'), timed[:2]):
        layers = [list(timm_aconv.adaptive_layers(model)) for model in (adaptive, spherical)]
        assert adaptive is not spherical and len(layers[0]) == len(layers[1]) == 19
        assert {layer.covariance_type for layer in layers[0]} == {kind}
        assert {layer.covariance_type for layer in layers[1]} == {'spherical'}
        assert [layer.out_channels for layer in layers[0]] == [layer.out_channels for layer in layers[1]]
        assert max(layer.out_channels for layer in layers[0]) == 8 and layers[0][0].kernel_size == (3, 3)
    for dims, ((adaptive, x), (ordinary, ordinary_x)) in zip((1, 2, 3), timed[2:]):
        assert [type(layer) for layer in adaptive] == [getattr(timm_aconv, f'AdaptiveConv{dims}d')] * 10
        assert [type(layer) for layer in ordinary] == [getattr(torch.nn, f'Conv{dims}d')] * 10
        assert all(
            (layer.in_channels, layer.out_channels, layer.kernel_size, layer.padding, layer.bias)
            == (4, 4, (3,) * dims, (1,) * dims, None)
            for layer in [*adaptive, *ordinary]
        )
        assert x is ordinary_x and x.shape == (1, 4, *{1: (64,), 2: (8, 8), 3: (4, 4, 4)}[dims])
        # both from seed 0: the same weights before their first step
        assert all(torch.equal(first, plain) for first, plain in zip(initial[id(adaptive)], initial[id(ordinary)]))
