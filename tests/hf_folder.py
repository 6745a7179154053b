"""Test fixtures on disk, made here (nothing downloaded): a tiny random BERT in Hugging Face's
format, written by `transformers` itself, and a generated, learnable labelled text file."""

from __future__ import annotations

import json
import random
from pathlib import Path

FILLER = [f"w{i}" for i in range(40)]
WORDS = ["good", "bad", *FILLER]


def tiny_bert(folder: Path, *, vocab_txt_only: bool = False, seed: int = 0) -> Path:
    """A 2-layer BertForMaskedLM with a WordPiece vocabulary of the labelled file's words."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    if not vocab_txt_only:
        # transformers' own conversion of vocab.txt into tokenizer.json (with a lower-casing normalizer)
        transformers.BertTokenizerFast.from_pretrained(folder, do_lower_case=True).save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    return folder


def labelled_jsonl(path: Path, n: int = 400, seed: int = 0) -> Path:
    """Sentences of filler words with one of "good"/"bad" somewhere in them; the label says which."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            label = rng.choice(["pos", "neg"])
            words = rng.choices(FILLER, k=rng.randint(3, 12))
            words.insert(rng.randint(0, len(words)), "good" if label == "pos" else "bad")
            f.write(json.dumps({"text": " ".join(words).upper(), "label": label}) + "\n")
    return path


# config.json as transformers 2.x wrote it (bert-base-uncased's in 2019): no model_type, no
# layer_norm_eps, no position_embedding_type; readers fill in BertConfig's defaults.
OLD_CONFIG = {"attention_probs_dropout_prob": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
              "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 37, "max_position_embeddings": 64,
              "num_attention_heads": 4, "num_hidden_layers": 2, "type_vocab_size": 2, "vocab_size": 47}

# The layouts folders in the wild have: which classes' keys, which file, how written.
OLD_LAYOUTS = ("bertmodel-bin", "pretraining-safetensors", "classification-sharded")


def old_bert(modern: Path, folder: Path, layout: str, seed: int = 1) -> Path:
    """The weights of `modern` (a tiny_bert folder) re-written by hand the way older releases and
    other tools saved BERTs, keys and all:

    - bertmodel-bin: BertModel's keys without a prefix (sentence-transformers' layout), the
      `embeddings.position_ids` buffer, a pooler, LayerNorm gamma/beta (TF-converted checkpoints),
      in pytorch_model.bin written by torch.save in its pre-1.6 (non-zip) format;
    - pretraining-safetensors: BertForPreTraining's keys (`bert.` prefix, `bert.embeddings.position_ids`,
      `cls.predictions.*` with the tied decoder written out, the NSP head `cls.seq_relationship.*`);
    - classification-sharded: BertForSequenceClassification's keys (`bert.`, pooler, a 2-label
      classifier) in two safetensors shards with a model.safetensors.index.json.
    """
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (modern / name).is_file():
            shutil.copy(modern / name, folder / name)
    (folder / "config.json").write_text(json.dumps(OLD_CONFIG, indent=2))
    theirs = load_file(str(modern / "model.safetensors"))  # BertForMaskedLM, as transformers writes it today
    encoder = {k: v for k, v in theirs.items() if k.startswith("bert.")}
    g = torch.Generator().manual_seed(seed)
    hidden = OLD_CONFIG["hidden_size"]
    pooler = {"bert.pooler.dense.weight": torch.randn(hidden, hidden, generator=g) * 0.02,
              "bert.pooler.dense.bias": torch.randn(hidden, generator=g) * 0.02}
    positions = torch.arange(OLD_CONFIG["max_position_embeddings"]).unsqueeze(0)
    if layout == "bertmodel-bin":
        state = {k.removeprefix("bert.").replace("LayerNorm.weight", "LayerNorm.gamma")
                 .replace("LayerNorm.bias", "LayerNorm.beta"): v.clone()
                 for k, v in {**encoder, **pooler}.items()}
        state["embeddings.position_ids"] = positions
        torch.save(state, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    elif layout == "pretraining-safetensors":
        state = {k: v.clone() for k, v in theirs.items()}
        state.update(pooler)
        state["bert.embeddings.position_ids"] = positions
        state["cls.predictions.decoder.weight"] = theirs["bert.embeddings.word_embeddings.weight"].clone()
        state["cls.predictions.decoder.bias"] = theirs["cls.predictions.bias"].clone()
        state["cls.seq_relationship.weight"] = torch.randn(2, hidden, generator=g)
        state["cls.seq_relationship.bias"] = torch.zeros(2)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    elif layout == "classification-sharded":
        state = {**{k: v.clone() for k, v in encoder.items()}, **pooler,
                 "classifier.weight": torch.randn(2, hidden, generator=g) * 0.02, "classifier.bias": torch.zeros(2)}
        names = sorted(state)
        shards = {"model-00001-of-00002.safetensors": names[:len(names) // 2],
                  "model-00002-of-00002.safetensors": names[len(names) // 2:]}
        for shard, keys in shards.items():
            save_file({k: state[k] for k in keys}, str(folder / shard), metadata={"format": "pt"})
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
                 "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        config = {**OLD_CONFIG, "architectures": ["BertForSequenceClassification"], "model_type": "bert",
                  "id2label": {"0": "neg", "1": "pos"}, "label2id": {"neg": 0, "pos": 1}}
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    else:
        raise ValueError(layout)
    return folder


def byte_bpe(path: Path, texts: list[str], vocab_size: int = 400, specials: list[str] | None = None) -> Path:
    """A byte-level BPE tokenizer.json as GPT-2's is built (ByteLevel pre-tokenizer, <|endoftext|>;
    RoBERTa's has other special tokens), trained here on texts with Hugging Face's tokenizers library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials or ["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    return path


# model=hf fixtures: tiny models of three families, written by transformers itself with the
# tokenizer each family uses (GPT-2's byte-level BPE with no pad token, RoBERTa's byte-level BPE
# with <s> <pad> </s> <mask> named in tokenizer_config.json, DistilBERT's WordPiece).
HF_KINDS = ("gpt2", "roberta", "distilbert")


def labelled_texts(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))).upper() for _ in range(n)]


def tiny_hf(folder: Path, kind: str, *, seed: int = 0, head: str = "base", dropout: float = 0.0) -> Path:
    """A 2-layer, 32-wide model of `kind` in a folder as save_pretrained writes it, with its tokenizer.

    head: "base" (GPT2LMHeadModel / RobertaForMaskedLM / DistilBertModel: a pretraining
    checkpoint, no classifier) or "classification" (the family's ForSequenceClassification, 2 labels)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, processors

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "distilbert":
        tiny_bert(folder)  # its vocab.txt and tokenizer.json (transformers' conversion); the weights are replaced
        for name in ("model.safetensors", "config.json"):
            (folder / name).unlink()
        vocab = len((folder / "vocab.txt").read_text().split())
        config = transformers.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                               max_position_embeddings=64, dropout=dropout, attention_dropout=dropout,
                                               seq_classif_dropout=dropout)
        classes = (transformers.DistilBertModel, transformers.DistilBertForSequenceClassification)
    else:
        specials = ["<|endoftext|>"] if kind == "gpt2" else ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        byte_bpe(folder / "tokenizer.json", labelled_texts(), specials=specials)
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        vocab = tok.get_vocab_size()
        if kind == "gpt2":
            # GPT-2's own files: tokenizer.json, and a tokenizer_config.json that names no pad token
            transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                                 eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                                 ).save_pretrained(folder)
            config = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                             resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                                             bos_token_id=0, eos_token_id=0)
            classes = (transformers.GPT2LMHeadModel, transformers.GPT2ForSequenceClassification)
        else:
            tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
            transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                 sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                                 pad_token="<pad>", mask_token="<mask>").save_pretrained(folder)
            config = transformers.RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=4, intermediate_size=37,
                                                max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
                                                bos_token_id=0, eos_token_id=2, hidden_dropout_prob=dropout,
                                                attention_probs_dropout_prob=dropout)
            classes = (transformers.RobertaForMaskedLM, transformers.RobertaForSequenceClassification)
    torch.manual_seed(seed)
    if head == "classification":
        config.num_labels = 2
        config.id2label, config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    classes[head == "classification"](config).save_pretrained(folder)
    return folder
