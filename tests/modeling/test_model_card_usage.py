"""The model card's usage snippet (model_cards/template.md, filled by training/run.py) runs verbatim on the folder a
training run exports, in a fresh process that has only the code saved next to the weights."""

import ast
import os
import re
import subprocess
import sys

from tests.helpers.training import run_in_process, tiny_args


def test_the_usage_snippet_of_an_exported_model_card_runs_verbatim(tmp_path):
    output_dir = tmp_path / "run"
    run_in_process(tiny_args(output_dir))
    card = (output_dir / "model" / "README.md").read_text()
    snippet = re.search(r"## Use\s+```python\n(.*?)```", card, flags=re.DOTALL).group(1)
    script = "import sys\nsys.modules['modeling_tarflow'] = None\n" + snippet   # only the folder's copy may serve
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    texts = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    count = int(re.search(r"num_return_sequences=(\d+)", snippet).group(1))
    length = int(re.search(r"max_new_tokens=(\d+)", snippet).group(1))
    assert len(texts) == count and all(len(text) == length and set(text) <= set("abcdefghijklmnopqrstuvwxyz ")
                                       for text in texts)
