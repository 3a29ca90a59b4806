#!/usr/bin/env python3
"""Integration: the command line of both executables (DESIGN §5): --check-config with exact
error lines, --version, --help, bad arguments; environment overrides; no secrets in logs."""

import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (OVERRIDE_VARS, SOURCE_ROOT, IntegrationTest, executable, free_port,  # noqa: E402
                     http, post_message, wait_task_status)

PROGRAMS = ("msg-api", "msg-consumer")


def project_version():
    with open(os.path.join(SOURCE_ROOT, "CMakeLists.txt"), encoding="utf-8") as f:
        m = re.search(r"project\(\s*\S+\s+VERSION\s+(\d+\.\d+\.\d+)", f.read())
    return m.group(1)


def run(program, *args, env=None):
    """Runs the program to completion with a clean environment (no override variables)."""
    child_env = {k: v for k, v in os.environ.items() if k not in OVERRIDE_VARS}
    child_env.update(env or {})
    return subprocess.run([executable(program), *args], capture_output=True, text=True,
                          timeout=20, env=child_env, stdin=subprocess.DEVNULL)


class ConfigTest(IntegrationTest):

    def write(self, name, text):
        path = os.path.join(self.tmpdir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_check_config_good(self):
        cfg = self.config()
        for program in PROGRAMS:
            with self.subTest(program=program):
                p = run(program, "--check-config", "--config", cfg)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertEqual(p.stdout, f"{cfg}: configuration OK\n")
                self.assertEqual(p.stderr, "")
                # The short options and the environment variable are the same thing.
                p = run(program, "-t", "-c", cfg)
                self.assertEqual((p.returncode, p.stdout), (0, f"{cfg}: configuration OK\n"))
                p = run(program, "--check-config", env={"MSG_CONFIG": cfg})
                self.assertEqual((p.returncode, p.stdout), (0, f"{cfg}: configuration OK\n"))

    def test_check_config_bad_listen(self):
        path = self.write("bad.yaml", "api:\n  listen: 80a\n")
        for program in PROGRAMS:
            with self.subTest(program=program):
                p = run(program, "--check-config", "--config", path)
                self.assertEqual(p.returncode, 1)
                self.assertEqual(p.stderr, f'{path}:2:11: api.listen: expected host:port, got "80a"\n')
                self.assertEqual(p.stdout, "")
                # Without --check-config the daemon refuses to start, same message.
                p = run(program, "--config", path)
                self.assertEqual(p.returncode, 1)
                self.assertEqual(p.stderr, f'{path}:2:11: api.listen: expected host:port, got "80a"\n')

    def test_check_config_reports_every_error(self):
        path = self.write("many.yaml", "api:\n  lisen: x\n  max_body: lots\nretry:\n  delays: [5s, 5]\n")
        for program in PROGRAMS:
            with self.subTest(program=program):
                p = run(program, "--check-config", "--config", path)
                self.assertEqual(p.returncode, 1)
                lines = p.stderr.splitlines()
                self.assertEqual(len(lines), 3, p.stderr)
                self.assertEqual(lines[0], f"{path}:2:3: api.lisen: unknown key")
                self.assertEqual(lines[1], f"{path}:3:13: api.max_body: expected a size (e.g. 512KiB, "
                                           f'1MiB) between 1KiB and 16MiB, got "lots"')
                self.assertEqual(lines[2], f"{path}:5:16: retry.delays[1]: expected a duration (e.g. "
                                           f'250ms, 5s, 2m, 24h) between 1ms and 24h, got "5"')

    def test_missing_file(self):
        path = os.path.join(self.tmpdir, "nope.yaml")
        for program in PROGRAMS:
            with self.subTest(program=program):
                p = run(program, "--check-config", "--config", path)
                self.assertEqual(p.returncode, 1)
                self.assertEqual(p.stderr, f"{path}: cannot open: No such file or directory\n")

    def test_environment_overrides_are_checked(self):
        cfg = self.config()
        p = run("msg-api", "--check-config", "--config", cfg, env={"APP_PORT": "99999"})
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stderr, '$APP_PORT: expected a port 1-65535, got "99999"\n')

    def test_version_help_and_bad_arguments(self):
        version = project_version()
        for program in PROGRAMS:
            with self.subTest(program=program):
                for flag in ("--version", "-V"):
                    p = run(program, flag)
                    self.assertEqual((p.returncode, p.stdout, p.stderr), (0, f"{program} {version}\n", ""))
                for flag in ("--help", "-h"):
                    p = run(program, flag)
                    self.assertEqual(p.returncode, 0)
                    self.assertTrue(p.stdout.startswith(f"Usage: {program} [--config FILE] [--check-config]\n"),
                                    p.stdout)
                    for option in ("--config", "--check-config", "--version", "--help"):
                        self.assertIn(option, p.stdout)
                    self.assertEqual(p.stderr, "")
                p = run(program, "--bogus")
                self.assertEqual(p.returncode, 2)
                self.assertEqual(p.stdout, "")
                self.assertIn("Usage:", p.stderr)
                p = run(program, "stray-argument")
                self.assertEqual(p.returncode, 2)
                self.assertIn("stray-argument", p.stderr)

    def test_version_matches_http(self):
        cfg, api, consumer = self.start_stack()
        version = project_version()
        self.assertEqual(http("GET", api.base_url + "/").json["version"], version)
        self.assertEqual(http("GET", consumer.base_url + "/health").json["version"], version)

    def test_env_overrides_and_no_secret_in_logs(self):
        """APP_PORT moves the api; EVOLUTION_API_KEY replaces the file's key, and the key
        appears in no log line, even at debug level."""
        secret = "s3cr3t-evo-key-DO-NOT-LOG"
        self.fake = self.start_fake(api_key=secret)
        cfg = self.config({"evolution": {"api_key": "wrong-key-in-file"}})
        port = free_port()
        api = self.start_api(cfg, listen=f"127.0.0.1:{port}", env={"APP_PORT": str(port)})
        consumer = self.start_consumer(cfg, env={"EVOLUTION_API_KEY": secret})
        r = post_message(api, "+5511987654321", "com a chave do ambiente")
        self.assertEqual(r.status, 202, r.body)
        wait_task_status(api, r.json["task_id"], "SUCCESS")
        self.assertEqual(self.fake.requests()[0]["headers"]["apikey"], secret)
        for daemon in (api, consumer):
            self.assertNotIn(secret, daemon.log())
            self.assertNotIn("wrong-key-in-file", daemon.log())


if __name__ == "__main__":
    unittest.main()
