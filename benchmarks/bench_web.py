"""Terminal output delivered to a real browser (headless Chromium), MB/s.

    python3 benchmarks/bench_web.py [--mib 32]
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.hosts import Host  # noqa: E402
from tests.test_web import type_line  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=32)
    args = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    host = Host(tempfile.mkdtemp(prefix="skypty-web-bench-")).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--no-first-run"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        url = host.client("url", "--cliaddr", host.cli).stdout.decode().strip()
        driver.get(url)
        while not driver.execute_script("return window.skyptyBytes"):
            time.sleep(0.05)
        n = args.mib * 1024 * 1024
        base = driver.execute_script("return window.skyptyBytes")
        start = time.perf_counter()
        type_line(driver, f"head -c {n} /dev/zero | tr -c x x")
        deadline = start + 120
        while driver.execute_script("return window.skyptyBytes") - base < n:
            if time.perf_counter() > deadline:
                got = driver.execute_script("return window.skyptyBytes") - base
                raise SystemExit(f"only {got} of {n} bytes arrived in 120 s")
            time.sleep(0.02)
        secs = time.perf_counter() - start
        print(f"{args.mib} MiB of terminal output delivered to headless Chromium: {n / secs / 1e6:.1f} MB/s "
              f"({secs:.2f} s)")
    finally:
        driver.quit()
        host.stop()


if __name__ == "__main__":
    main()
