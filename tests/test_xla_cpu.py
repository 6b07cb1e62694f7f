"""The XLA CPU flags the commands add: added once, never over the user's own, gated on jaxlib."""

from conftest import OPTIMIZED_COMPILE
from jaxdiff import xla_cpu

FLAG = xla_cpu.FLAGS[0]


def test_adds_the_flag_to_empty_and_existing_xla_flags():
  env = {}
  assert xla_cpu.apply(env, xla_cpu.MEASURED_ON) == [FLAG]
  assert env["XLA_FLAGS"] == FLAG
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  xla_cpu.apply(env, xla_cpu.MEASURED_ON)
  assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=4 {FLAG}"
  assert xla_cpu.apply(env, xla_cpu.MEASURED_ON) == []  # a second call adds nothing
  assert env["XLA_FLAGS"].count(FLAG) == 1


def test_keeps_the_users_value_opt_out_and_other_jaxlib_versions():
  name = FLAG.split("=")[0]
  env = {"XLA_FLAGS": f"{name}=+individual_convolution"}
  assert xla_cpu.apply(env, xla_cpu.MEASURED_ON) == []
  assert env["XLA_FLAGS"] == f"{name}=+individual_convolution"
  env = {"JAXDIFF_XLA_CPU_DEFAULTS": "0"}
  assert xla_cpu.apply(env, xla_cpu.MEASURED_ON) == [] and "XLA_FLAGS" not in env
  env = {}
  assert xla_cpu.apply(env, (0, 9)) == [] and "XLA_FLAGS" not in env


def test_sampler_options_only_on_cpu_with_the_commands_setting():
  want = {"xla_cpu_experimental_ynn_fusion_type": ",".join(xla_cpu.ELTWISE_YNN_TYPES)}
  ours = {"XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {FLAG}"}
  assert xla_cpu.eltwise_compiler_options("cpu", ours, xla_cpu.MEASURED_ON) == want
  name = FLAG.split("=")[0]
  for backend, env, version in (
      ("gpu", ours, xla_cpu.MEASURED_ON), ("tpu", ours, xla_cpu.MEASURED_ON),
      ("cpu", ours, (0, 9)),  # another jaxlib: its XLA may not know the enum names
      ("cpu", dict(ours, JAXDIFF_XLA_CPU_DEFAULTS="0"), xla_cpu.MEASURED_ON),
      ("cpu", {}, xla_cpu.MEASURED_ON),  # apply() not called: the process keeps jaxlib's defaults
      ("cpu", {"XLA_FLAGS": f"{name}=+individual_convolution"}, xla_cpu.MEASURED_ON),  # the user's
      ("cpu", {"XLA_FLAGS": f"{FLAG} {name}=+eltwise"}, xla_cpu.MEASURED_ON)):
    assert xla_cpu.eltwise_compiler_options(backend, env, version) == {}, (backend, env, version)


def test_sampler_options_compile_into_ynnpack_elementwise_fusions_with_the_same_values():
  """The enum names are XLA's (a wrong one fails every sampler compile): the option turns
  GroupNorm-SiLU's elementwise passes into YNNPACK fusions, and the values stay within float32
  round-off of the process-wide setting's program."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import pytest
  from jaxdiff.nets import layers
  env = {"XLA_FLAGS": FLAG}  # as the commands run (this test process keeps jaxlib's defaults)
  opts = xla_cpu.eltwise_compiler_options(jax.default_backend(), env)
  if not opts:
    pytest.skip("not a CPU with the jaxlib the options were measured on (0.10)")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 32, 32, 16)) + 0.5, jnp.float32)  # YNNPACK takes sizable ops
  w, b = jnp.asarray(rng.standard_normal(16), jnp.float32), jnp.zeros((16,), jnp.float32)
  f = lambda x: layers.group_norm_silu(x, w, b, None, None, 4, 1e-5)  # noqa: E731
  # Both at the commands' optimisation level (the test session compiles at level 0).
  plain = jax.jit(f, compiler_options=OPTIMIZED_COMPILE).lower(x).compile()
  sampler = jax.jit(f, compiler_options={**OPTIMIZED_COMPILE, **opts}).lower(x).compile()
  assert sampler.as_text().count("__ynn_fusion") > plain.as_text().count("__ynn_fusion")
  np.testing.assert_allclose(sampler(x), plain(x), rtol=1e-6, atol=1e-6)


def test_config_switches_put_the_options_in_train_and_sampler_programs(monkeypatch):
  """training.cpu_eltwise_fusions / sampler.cpu_eltwise_fusions reach the jax.jit of the programs
  built from the config (the test above checks that the options compile into YNNPACK fusions), and
  default to off for configs without the keys (workdirs written before them)."""
  import jax
  from conftest import DIGITS, TINY
  from jaxdiff import build, families
  from jaxdiff.config import load_config
  from jaxdiff.model import make_sample_fn
  monkeypatch.setenv("XLA_FLAGS", FLAG)  # read per program; the backend keeps this session's flags
  want = xla_cpu.eltwise_compiler_options(jax.default_backend())
  if not want:
    import pytest
    pytest.skip("not a CPU with the jaxlib the options were measured on (0.10)")
  seen, real_jit = [], jax.jit
  def spy(fun, **kwargs):
    seen.append(kwargs.get("compiler_options") or {})
    return real_jit(fun, **kwargs)
  monkeypatch.setattr(jax, "jit", spy)
  for on in (False, True):
    exp = build.experiment(load_config(DIGITS, TINY + [
        f"--config.training.cpu_eltwise_fusions={on}", f"--config.sampler.cpu_eltwise_fusions={on}"]))
    assert exp.training.cpu_eltwise_fusions is on and exp.sampling.cpu_eltwise_fusions is on
    graphdef, _ = families.abstract_network(exp)
    optimizer = families.make_optimizer(exp)
    seen.clear()
    families.compile_step(exp, families.step_config(exp, graphdef, optimizer),
                          compiler_options={"xla_backend_optimization_level": 1})
    assert seen == [{"xla_backend_optimization_level": 1, **(want if on else {})}], seen
    seen.clear()
    make_sample_fn.cache_clear()
    make_sample_fn(graphdef, exp.precond, exp.label_dim, exp.data.shape,
                   tuple(sorted(exp.sampling.kwargs().items())), 1.0,
                   exp.sampling.cpu_eltwise_fusions)
    assert seen == [want if on else {}], seen
  make_sample_fn.cache_clear()
  cfg = load_config(DIGITS)
  with cfg.unlocked():
    del cfg.training["cpu_eltwise_fusions"], cfg.sampler["cpu_eltwise_fusions"]
  old = build.experiment(cfg)
  assert not old.training.cpu_eltwise_fusions and not old.sampling.cpu_eltwise_fusions
