"""The XLA CPU flags the commands add: added once, never over the user's own, gated on jaxlib."""

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
