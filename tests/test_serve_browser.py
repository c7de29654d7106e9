"""The chat page in a real browser: Debian's chromium, headless, driven by selenium through chromium-driver
(`make system` installs both), loads http://127.0.0.1:PORT/, sends a message and sees the streamed answer
appear; New chat clears the conversation."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import urllib.request

import pytest
from helpers import TINY_MODELS, Server, word_checkpoint

CFG = dataclasses.replace(TINY_MODELS["gqa8x2-tied"], vocab_size=320, max_seq_len=256)
BROWSER, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def driver():
    if not (BROWSER and DRIVER):
        message = "the browser test needs chromium and chromium-driver: run make system (or apt-get install them)"
        if sys.platform.startswith("linux"):
            pytest.fail(message)
        pytest.skip(message)
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    flags = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,800")
    for flag in flags:
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield browser
    browser.quit()


@pytest.mark.slow
def test_the_chat_page_streams_an_answer(driver, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ckpt = word_checkpoint(tmp_path, CFG)
    server = Server("--model", ckpt, "--backend", "torch", log=tmp_path / "serve.log")
    try:
        driver.get(server.url + "/")
        assert driver.title == "tiny-llama chat"
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "model").text == "words.ckpt")
        driver.find_element(By.ID, "system").send_keys("w9 w9")
        driver.find_element(By.ID, "max-tokens").clear()
        driver.find_element(By.ID, "max-tokens").send_keys("12")
        driver.find_element(By.ID, "temperature").clear()  # greedy: the same answer every run (a sampled token
        driver.find_element(By.ID, "temperature").send_keys("0")  # of the random model may be <unk> or the end)
        driver.find_element(By.ID, "input").send_keys("w3 w4 w5")
        driver.find_element(By.ID, "send").click()
        answer = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#answer-1[data-done='true'] .text"))
        assert answer.text.strip() and not driver.find_elements(By.CSS_SELECTOR, ".msg.error")
        messages = [{"role": "system", "content": "w9 w9"}, {"role": "user", "content": "w3 w4 w5"}]
        body = json.dumps({"model": "words.ckpt", "messages": messages, "temperature": 0, "max_tokens": 12})
        request = urllib.request.Request(server.url + "/v1/chat/completions", body.encode(),
                                         {"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as reply:  # the API's own greedy answer, not streamed
            expected = json.loads(reply.read())["choices"][0]["message"]["content"]
        assert answer.text.strip() == expected.strip()  # what the page streamed, token by token
        assert [m.text for m in driver.find_elements(By.CSS_SELECTOR, ".msg.user .text")] == ["w3 w4 w5"]
        driver.save_screenshot(str(tmp_path / "chat.png"))
        driver.find_element(By.ID, "new-chat").click()
        assert driver.find_elements(By.CSS_SELECTOR, ".msg") == []
    finally:
        assert server.stop() == 0
