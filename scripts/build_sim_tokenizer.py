# ruff: noqa: RUF001  (the corpus is multi-lingual on purpose: full-width punctuation, math signs)
"""Build the simulated gRPC worker's tokenizer directory, `smg/simworker/model/`.

The simulated worker (`smg sim-worker --grpc`) serves a model directory through GetTokenizer, as
a real SGLang or vLLM engine does, and the gateway then tokenizes, renders the chat template and
detokenizes with it. So it must be a real Hugging Face layout, small enough to ship in the wheel
(tokenizer.json is a couple of hundred kB), and reproducible, so a reviewer can check that the
committed files are what this script makes:

- `tokenizer.json`: a byte-level BPE (every string encodes, multi-byte characters span several
  tokens, which is what the incremental detokenizer must get right), trained with `tokenizers`
  on the small English + code + multi-lingual corpus below plus lines generated from a fixed
  seed, with Qwen2-style pre-tokenization; then the ChatML specials (`<|endoftext|>`,
  `<|im_start|>`, `<|im_end|>`: special, dropped by `skip_special_tokens`) and the tool and
  reasoning markers (`<tool_call>`, `</tool_call>`, `<think>`, `</think>`, `<tool_response>`,
  `</tool_response>`: added but not special, so they stay in decoded text for the parsers), after
  the trained vocabulary as Qwen numbers them.
- `tokenizer_config.json`: the special tokens and a ChatML chat template with tools in the
  Qwen2.5 manner (tools listed in the system turn inside `<tools></tools>`, calls written as
  `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`, results as role `tool` wrapped in
  `<tool_response>` inside a user turn) and Qwen3's `enable_thinking=false` (an empty think block
  after the generation prompt).
- `generation_config.json`: the stop ids (`<|im_end|>`, `<|endoftext|>`).

Usage: `python scripts/build_sim_tokenizer.py` writes the files; `--check` rebuilds in memory and
exits 1 when the committed files differ. The BPE trainer is deterministic for one version of
`tokenizers` (`BUILT_WITH`); another version may number merges differently, and then the files
are rebuilt and committed again.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

BUILT_WITH = "0.23.3"  # the tokenizers version the committed files were made with
VOCAB_SIZE = 4096  # byte alphabet + merges; the added tokens come after
MODEL_MAX_LENGTH = 32768
OUT = Path(__file__).resolve().parent.parent / "smg" / "simworker" / "model"

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKERS = ["<tool_call>", "</tool_call>", "<think>", "</think>", "<tool_response>", "</tool_response>"]

# Qwen2/GPT-4 style pre-tokenization: contractions, words with one leading non-letter, single
# digits, punctuation runs, newlines, and whitespace kept apart from the word that follows.
SPLIT_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

CHAT_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages and messages[0].role == 'system' %}
        {{- (messages[0].content or '') + '\\n\\n' }}
    {%- endif %}
    {{- '# Tools\\n\\nYou may call the functions below to help with the request. Their signatures are inside <tools></tools>:\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' + (tool | tojson) }}
    {%- endfor %}
    {{- '\\n</tools>\\n\\nTo call a function, write a JSON object with its name and arguments inside <tool_call></tool_call> tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}
{%- elif messages and messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + (messages[0].content or '') + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {%- if not loop.first %}
            {{- '<|im_start|>system\\n' + (message.content or '') + '<|im_end|>\\n' }}
        {%- endif %}
    {%- elif message.role == 'user' %}
        {{- '<|im_start|>user\\n' + (message.content or '') + '<|im_end|>\\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\\n' + (message.content or '') }}
        {%- for tool_call in message.tool_calls or [] %}
            {%- set call = tool_call.function if tool_call.function is defined else tool_call %}
            {%- if message.content or not loop.first %}
                {{- '\\n' }}
            {%- endif %}
            {{- '<tool_call>\\n{\"name\": ' + (call.name | tojson) + ', \"arguments\": ' + (call.arguments | tojson) + '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or loop.previtem.role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + (message.content or '') + '\\n</tool_response>' }}
        {%- if loop.last or loop.nextitem.role != 'tool' %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- else %}
        {{- raise_exception('unknown role: ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

ENGLISH = """\
The gateway routes each request to the worker most likely to hold its prefix in cache.
A simulated worker answers quickly and deterministically, so tests can check every byte.
When the prompt offers tools, the model calls the first one with the arguments it requires.
Before answering, the model may think for a while, then it writes a short and helpful reply.
Hello! How can I help you today? I am a helpful assistant, and I will do my best.
The weather in Paris is mild today, with a light breeze and a few clouds in the afternoon.
Please summarize the following document in three sentences, keeping the important numbers.
She asked whether the train would arrive on time; the conductor said it was running late.
We measured the latency of every request and found that the slowest ones waited in a queue.
It's a small model, so it doesn't know much, but it's fast and it won't make things up.
They're building a new library near the river, and we'll visit it when it opens next year.
Write a function that returns the sum of the squares of the numbers in a list.
The quick brown fox jumps over the lazy dog while the cat sleeps by the warm fire.
Tokens are pieces of words; a long word may be split into several tokens, a short one is one.
In the morning the market opens early, and the farmers bring fresh bread, cheese and fruit.
The answer depends on the question: ask clearly, and you will receive a clear response.
Streaming sends each token as soon as it is ready, so the first words appear without delay.
If the connection drops, the request is cancelled and the worker stops generating.
The cache keeps the keys and values of recent prompts, which makes repeated prefixes cheap.
Each node in the cluster gossips with its peers and agrees on which workers are healthy.
Thank you for your patience. Your order has shipped and should arrive within five days.
Let me think step by step. First, find the total. Then divide by the number of items.
The result is forty-two, which is the answer to the ultimate question of life and everything.
Reasoning models write their thoughts first and their final answer afterwards.
The function get_weather takes a city and an optional unit, either celsius or fahrenheit.
Search the knowledge base for articles about billing, refunds and account settings.
Translate the sentence into French, German and Spanish, then compare the three versions.
Good morning, good afternoon, good evening and good night: greetings change through the day.
An error occurred while processing your request; please try again in a few seconds.
The system prompt tells the assistant who it is and how it should behave in the conversation.
"""

CODE = """\
def add(a: int, b: int) -> int:
    return a + b


class Cache:
    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self.items: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.items.get(key)


for i in range(10):
    print(f"step {i}: {i * i}")

import json
payload = json.dumps({"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]})
if __name__ == "__main__":
    main()
const response = await fetch("/v1/chat/completions", { method: "POST", body: JSON.stringify(body) });
function greet(name) { return `Hello, ${name}!`; }
let total = items.reduce((sum, item) => sum + item.price, 0);
fn main() { println!("hello, world"); }
SELECT id, name, created_at FROM users WHERE active = true ORDER BY created_at DESC LIMIT 10;
curl -s http://localhost:8000/v1/models | jq '.data[].id'
$ pip install smg-gateway && smg launch --worker-urls grpc://127.0.0.1:50051
{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
{"id": "call_0", "type": "function", "function": {"name": "search", "arguments": "{\\"query\\": \\"refunds\\"}"}}
<tool_call>
{"name": "lookup", "arguments": {"key": "value"}}
</tool_call>
"""

MULTILINGUAL = """\
Le café est très chaud ; fais attention à ne pas te brûler. Où est la gare, s'il vous plaît ?
Die Straße ist nass, weil es den ganzen Tag geregnet hat. Schöne Grüße aus München!
El niño comió una manzana y después salió a jugar al jardín con su perro. ¿Qué hora es?
Россия — самая большая страна в мире. Привет, как дела? Спасибо, хорошо.
今日は天気がいいですね。東京タワーに行きましょう。ありがとうございます。
你好，世界！我们今天去公园散步吧。这个模型很小，但是速度很快。
안녕하세요. 만나서 반갑습니다. 오늘 날씨가 좋네요.
Ελληνικά: καλημέρα, ευχαριστώ πολύ. שלום עולם. مرحبا بالعالم.
Emoji too: 🙂 👍 🚀 🎉 ❤️ ✅ — and symbols like € £ ¥ © ® ™ ° ± × ÷ ≤ ≥ ≠ ∞ → ←.
naïve café résumé façade coöperate Zürich São Paulo Kraków Ångström Dvořák
"""

WORDS = (
    "time person year way day thing man world life hand part child eye woman place work week case point "
    "government company number group problem fact question answer model token request worker gateway cache "
    "prefix stream tool call function argument value result error message system user assistant reasoning "
    "city weather temperature unit search query document summary price order item list key name id type "
    "good new first last long great little own other old right big high different small large next early "
    "young important few public bad same able quick slow warm cold bright dark simple careful helpful "
    "be have do say get make go know take see come think look want give use find tell ask seem feel try "
    "leave call keep let begin show hear play run move live believe hold bring happen write provide sit "
    "stand lose pay meet include continue set learn change lead understand watch follow stop create speak "
    "read allow add spend grow open walk win offer remember love consider appear buy wait serve send expect "
    "build stay fall cut reach kill remain suggest raise pass sell require report decide pull return route "
    "about above across after again against almost alone along already also although always among another "
    "anyone anything around because before behind below beside between beyond both during each either enough "
    "even ever every everything except far however inside instead later least less maybe might more most much "
    "near nearly never nothing often once only outside over perhaps quite rather really since so sometimes "
    "soon still such than that then there therefore these though through together too toward under until upon "
    "usually very whatever when where whether which while who whole whose why within without yet "
    "account action activity address adult advice afternoon agency agreement air amount analysis animal "
    "apartment application approach area article artist attention audience author authority balance bank "
    "base basis battle beach bed behavior benefit bill bird blood board boat body book border bottle box boy "
    "brain branch bread breakfast bridge brother budget building business button camera campaign capital car "
    "card career cat category cell center chair chance channel chapter character charge chicken choice church "
    "citizen class client climate clock cloud club coast code coffee college color column comment committee "
    "community computer concept condition conference connection content context contract control conversation "
    "copy corner cost country county couple course court cousin credit crime culture cup customer data "
    "daughter deal death debate decade decision definition degree department design desk detail device "
    "difference dinner direction director discussion disease distance doctor dog door dream dress drink "
    "driver economy edge education effect effort election element email employee energy engine engineer "
    "entry environment equipment estate evening event evidence example exchange exercise experience expert "
    "face factor family farm father feature feedback field figure file film finger fire fish flight floor "
    "flower focus food foot force forest form foundation frame friend front fruit fuel future game garden gas "
    "gift girl glass goal gold grade grass ground growth guest guide gun hair half hall hat head health heart "
    "heat history hole holiday home hope horse hospital hotel hour house husband idea image impact income "
    "industry information input insurance interest internet interview investment island issue job journey "
    "judge kitchen knowledge lab lake land language law lawyer layer leader letter level library light limit "
    "line link location lunch machine magazine management manager map market marriage master match material "
    "meal meaning measure media meeting member memory menu method middle minute mistake moment money month "
    "morning mother mountain mouse mouth movie music nation nature network news night note object office oil "
    "opinion option output owner page pain painting paper parent party patient pattern payment peace period "
    "phone photo picture piece plan plant platform player pocket poem policy pool population position post "
    "power practice presence president pressure priority process product profile program project property "
    "protection purpose quality range rate reader reality reason record region relation release research "
    "resource response rest restaurant review river road rock role room rule safety salt sample scene school "
    "science score screen season seat second secret section security sense series server service session "
    "shape share shop side signal silver sister site size skill sky sleep software soil song sound source "
    "space speaker speech speed sport spring staff stage standard star state station step stock storage store "
    "story strategy street strength structure student study style subject success sugar summer sun supply "
    "support surface table task tax teacher team technology television term test text theory thought ticket "
    "tone tooth topic town track trade traffic training tree trip truth variety version video view village "
    "voice volume water wave weekend wheel window wine winter wood word writer yard zone "
    "async await bool buffer bytes channel class client config const default dict enum except false float "
    "handler header import index integer iterator json lambda logger mutex nil none null parser pointer "
    "queue socket string struct thread timeout true tuple vector yield"
).split()

NAMES = ["get_weather", "search", "lookup", "book_flight", "send_email", "get_time", "calculate", "translate"]
CITIES = ["Paris", "Tokyo", "Berlin", "Lagos", "Lima", "Oslo", "Seoul", "Cairo", "Sydney", "Toronto"]


def corpus() -> list[str]:
    """The training text: the fixed passages above, repeated a little so their merges win, and
    lines generated from a fixed seed (sentences, numbers, tool calls, ChatML turns)."""
    rng = random.Random(20261130)
    lines = [line for block in (ENGLISH, CODE, MULTILINGUAL) for line in block.splitlines() if line.strip()] * 3
    for _ in range(6000):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
        sentence = " ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!", ","])
        lines.append(sentence)
    for _ in range(600):
        name, city = rng.choice(NAMES), rng.choice(CITIES)
        args = {"city": city, "days": rng.randint(1, 14), "unit": rng.choice(["celsius", "fahrenheit"])}
        lines.append("<tool_call>\n" + json.dumps({"name": name, "arguments": args}) + "\n</tool_call>")
        lines.append(f"<|im_start|>user\nWhat is the {rng.choice(WORDS)} in {city}?<|im_end|>")
        lines.append(f"<think>\nThe user asks about {city}. I should call {name}.\n</think>\n\n")
        lines.append(f"{rng.randint(0, 10**6)} {rng.random():.4f} {rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}")
    return lines


def build() -> dict[str, str]:
    """The directory's files, name -> text, exactly as committed."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL])
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in MARKERS])

    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL}
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    generation = {"eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "pad_token_id": ids["<|endoftext|>"]}
    return {
        "tokenizer.json": tokenizer.to_str(pretty=True) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
        "generation_config.json": json.dumps(generation, indent=2) + "\n",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    parser.add_argument("--out", type=Path, default=OUT, help="the directory to write (default: %(default)s)")
    args = parser.parse_args(argv)
    files = build()
    if args.check:
        stale = [
            name
            for name, text in files.items()
            if not (args.out / name).is_file() or (args.out / name).read_text("utf-8") != text
        ]
        if stale:
            print(f"{args.out}: {', '.join(stale)} differ from what this script builds; run it again", file=sys.stderr)
            return 1
        print(f"{args.out}: up to date")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8")
    print(f"wrote {', '.join(files)} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
