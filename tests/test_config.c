/* Config: defaults, every kind of error (unknown key with suggestion, wrong type, out of
 * range, bad JSON with position, cross-key validation), --set, and the JSON round trip. */
#include "ddpm/config.h"
#include "ddpm/err.h"
#include "test.h"

static int parse(Config *c, const char *json) {
    config_defaults(c);
    int rc = config_parse(c, json, "x.json");
    return rc ? rc : config_validate(c);
}

static void expect_err(const char *json, const char *needle, const char *what) {
    Config c;
    int rc = parse(&c, json);
    T_OK(rc == 2 && strstr(err_msg(), needle), "%s -> exit 2 naming %s: %s", what, needle, err_msg());
}

int main(void) {
    Config c;
    config_defaults(&c);
    T_OK(c.model.ch == 64 && c.model.n_levels == 3 && c.diffusion.T == 1000 && !strcmp(c.diffusion.schedule, "linear") &&
             c.sample.clip,
         "defaults");
    T_OK(parse(&c, "{}") == 0, "empty object is valid");
    T_OK(parse(&c, "{\"model\": {\"ch\": 32, \"ch_mult\": [1,2], \"groups\": 8, \"attn_resolutions\": []}}") == 0 && c.model.ch == 32 &&
             c.model.n_levels == 2 && c.model.n_attn == 0,
         "values override defaults");

    expect_err("{\"model\": {\"chanels\": 3}}", "did you mean \"model.ch\"", "misspelt key");
    expect_err("{\"model\": {\"chanels\": 3}}", "\"model.chanels\"", "misspelt key full path");
    expect_err("{\"trian\": {}}", "did you mean \"train\"", "misspelt section");
    expect_err("{\"train\": {\"lr\": \"fast\"}}", "\"train.lr\" must be a number", "string for a number");
    expect_err("{\"data\": {\"image_size\": -3}}", "\"data.image_size\"", "negative size");
    expect_err("{\"data\": {\"image_size\": 2.5}}", "must be an integer", "fraction for an integer");
    expect_err("{\"data\": {\"hflip\": 1}}", "true or false", "number for a bool");
    expect_err("{\"diffusion\": {\"schedule\": \"quadratic\"}}", "linear|cosine|sigmoid", "bad choice");
    expect_err("{\"model\": {\"ch_mult\": [1, \"2\"]}}", "\"model.ch_mult\"[1]", "bad list element");
    expect_err("{\"model\": {\"ch\": 30}}", "not divisible by \"model.groups\"", "groups");
    expect_err("{\"data\": {\"image_size\": 30}}", "divisible by 2^(levels-1)", "resolution vs levels");
    expect_err("{\"model\": {\"attn_resolutions\": [8]}}", "not a resolution of this model (28, 14, 7)", "attention resolution");
    expect_err("[1,2]", "must be a JSON object", "not an object");
    expect_err("{\"model\": 3}", "\"model\" must be an object", "section not an object");
    expect_err("{\n  \"model\": {\"ch\": 64,}\n}", "x.json:2:", "malformed JSON names line");

    T_OK(config_load(&c, "/nonexistent/cfg.json") == 2 && strstr(err_msg(), "/nonexistent/cfg.json"), "missing file: %s",
         err_msg());

    config_defaults(&c);
    T_OK(config_set(&c, "train.lr=1e-4") == 0 && fabsf(c.train.lr - 1e-4f) < 1e-10, "--set float");
    T_OK(config_set(&c, "data.format=cifar10") == 0 && !strcmp(c.data.format, "cifar10"), "--set bare string");
    T_OK(config_set(&c, "model.ch_mult=[1,2,2,2]") == 0 && c.model.n_levels == 4, "--set list");
    T_OK(config_set(&c, "data.hflip=true") == 0 && c.data.hflip, "--set bool");
    T_OK(config_set(&c, "train.lr=abc") == 2 && strstr(err_msg(), "train.lr"), "--set wrong type: %s", err_msg());
    T_OK(config_set(&c, "model.chanels=3") == 2 && strstr(err_msg(), "did you mean \"model.ch\""), "--set unknown: %s", err_msg());
    T_OK(config_set(&c, "novalue") == 2, "--set without '='");
    T_OK(config_set(&c, "train.lr=2e-4x") == 2 && strstr(err_msg(), "train.lr"), "--set with trailing junk refused: %s", err_msg());
    T_OK(config_set(&c, "train.lr=1\n2") == 2 && !strchr(err_msg(), '\n'), "a newline in --set stays off the one error line: %s",
         err_msg());

    /* fine-tuning keys: train.init_from, the train.lora object, data.classes */
    config_defaults(&c);
    T_OK(c.train.lora.rank == 0 && c.train.lora.alpha == 0 && c.train.lora.targets == 1 && !c.train.init_from[0] &&
             c.data.n_classes == 0,
         "defaults: LoRA off (rank 0), targets [\"attn\"] (mask %u), no init_from, every class", c.train.lora.targets);
    T_OK(parse(&c, "{\"train\": {\"init_from\": \"runs/base/latest.safetensors\", \"lora\": {\"rank\": 4, \"alpha\": 8,"
                   " \"targets\": [\"attn\", \"temb\"]}}, \"data\": {\"classes\": [8], \"limit\": 200}}") == 0 &&
             !strcmp(c.train.init_from, "runs/base/latest.safetensors") && c.train.lora.rank == 4 && c.train.lora.alpha == 8 &&
             c.train.lora.targets == (1 | 4) && c.data.n_classes == 1 && c.data.classes[0] == 8 && c.data.limit == 200,
         "nested train.lora object, init_from, data.classes read (%s)", err_msg());
    T_OK(parse(&c, "{\"train\": {\"lora\": {\"rank\": 2}}}") == 0 && c.train.lora.rank == 2 && c.train.lora.targets == 1,
         "a train.lora object with only a rank keeps the default targets");
    expect_err("{\"train\": {\"lora\": {\"rnak\": 4}}}", "did you mean \"train.lora.rank\"", "misspelt key in train.lora");
    expect_err("{\"train\": {\"lora\": 4}}", "\"train.lora\" must be an object", "train.lora not an object");
    expect_err("{\"train\": {\"lora\": {\"rank\": 1025}}}", "\"train.lora.rank\" = 1025 is out of range", "rank too large");
    expect_err("{\"train\": {\"lora\": {\"rank\": -1}}}", "\"train.lora.rank\"", "negative rank");
    expect_err("{\"train\": {\"lora\": {\"rank\": 4, \"targets\": [\"attn\", \"mlp\"]}}}",
               "\"train.lora.targets\"[1] = \"mlp\" is not allowed: use names from attn|conv|temb", "unknown target group");
    expect_err("{\"train\": {\"lora\": {\"targets\": [3]}}}", "\"train.lora.targets\"[0]", "a number as a target");
    expect_err("{\"train\": {\"lora\": {\"targets\": {}}}}", "\"train.lora.targets\" must be a list of names", "an object as targets");
    expect_err("{\"train\": {\"lora\": {\"rank\": 4, \"targets\": []}}}", "\"train.lora.targets\" is empty",
               "rank without targets");
    T_OK(parse(&c, "{\"train\": {\"lora\": {\"rank\": 0, \"targets\": []}}}") == 0, "no targets is fine with LoRA off");
    expect_err("{\"train\": {\"lora\": {\"alpha\": -1}}}", "\"train.lora.alpha\"", "negative alpha");
    expect_err("{\"data\": {\"classes\": [1, 8, 1]}}", "\"data.classes\" lists 1 twice", "a class listed twice");
    expect_err("{\"data\": {\"classes\": [-1]}}", "\"data.classes\"", "a negative label");
    expect_err("{\"data\": {\"classes\": [\"Bag\"]}}", "\"data.classes\"[0] must be an integer", "a name as a label");
    {
        char big[2000];
        for (int n = CFG_MAX_CLASSES; n <= CFG_MAX_CLASSES + 1; n++) { /* labels 0..n-1 */
            snprintf(big, sizeof big, "{\"data\": {\"classes\": [");
            for (int i = 0; i < n; i++) snprintf(big + strlen(big), sizeof big - strlen(big), "%s%d", i ? "," : "", i);
            snprintf(big + strlen(big), sizeof big - strlen(big), "]}}");
            if (n == CFG_MAX_CLASSES)
                T_OK(parse(&c, big) == 0 && c.data.n_classes == n, "%d labels are allowed (%d)", n, c.data.n_classes);
            else
                expect_err(big, "0 to 256 elements", "257 labels");
        }
    }
    config_defaults(&c);
    T_OK(config_set(&c, "train.lora.rank=8") == 0 && c.train.lora.rank == 8, "--set train.lora.rank");
    T_OK(config_set(&c, "train.lora.targets=conv") == 0 && c.train.lora.targets == 2, "--set train.lora.targets=conv (one bare name)");
    T_OK(config_set(&c, "train.lora={\"alpha\": 16, \"targets\": [\"conv\", \"attn\"]}") == 0 && c.train.lora.alpha == 16 &&
             c.train.lora.targets == 3 && c.train.lora.rank == 8,
         "--set train.lora={...} sets the keys it names, keeps the others");
    T_OK(config_set(&c, "train.lora=4") == 2 && strstr(err_msg(), "\"train.lora\" must be an object"), "--set train.lora=4: %s", err_msg());
    T_OK(config_set(&c, "train.lora.rnak=4") == 2 && strstr(err_msg(), "did you mean \"train.lora.rank\""), "--set misspelt: %s",
         err_msg());
    T_OK(config_set(&c, "data.classes=[0,1,2,3,4,5,6,7,9]") == 0 && c.data.n_classes == 9 && c.data.classes[8] == 9,
         "--set data.classes with 9 labels (more than the 8 levels of model lists)");
    T_OK(c.data.n_held_out == 3 && !strcmp(c.data.held_out[1], "a large faint bag"), "data.held_out defaults to 3 captions");
    T_OK(config_set(&c, "data.held_out=[\"a large bright coat\"]") == 0 && c.data.n_held_out == 1 &&
             !strcmp(c.data.held_out[0], "a large bright coat"),
         "--set data.held_out with one caption");
    T_OK(config_set(&c, "data.held_out=[]") == 0 && c.data.n_held_out == 0, "--set data.held_out=[] holds nothing out");
    T_OK(config_set(&c, "data.held_out=[\"a large bright coat\", 3]") == 2 && strstr(err_msg(), "\"data.held_out\"[1] must be a string"),
         "a number in data.held_out: %s", err_msg());
    T_OK(config_set(&c, "data.held_out=\"a large bright coat\"") == 2 && strstr(err_msg(), "must be a list of strings"),
         "a bare string for data.held_out: %s", err_msg());
    T_OK(config_set(&c, "train.init_from=runs/base/ema.safetensors") == 0 && !strcmp(c.train.init_from, "runs/base/ema.safetensors"),
         "--set train.init_from");

    /* round trip: to_json then parse gives identical structs */
    Config a, b;
    config_defaults(&a);
    config_set(&a, "train.lr=0.00013");
    config_set(&a, "model.attn_resolutions=[14,7]");
    config_set(&a, "data.path=some \"quoted\" path");
    config_set(&a, "train.lora={\"rank\": 4, \"alpha\": 0.5, \"targets\": [\"temb\", \"conv\"]}");
    config_set(&a, "data.classes=[9, 0, 3]");
    config_set(&a, "train.init_from=base.safetensors");
    config_set(&a, "data.held_out=[\"a large faint coat\"]");
    char *js = config_to_json(&a);
    config_defaults(&b);
    int rc = config_parse(&b, js, "roundtrip");
    T_OK(rc == 0 && !memcmp(&a, &b, sizeof a), "config_to_json round-trips exactly");
    free(js);

    /* shipped configs load */
    const char *files[] = {"configs/cifar.json", "configs/cifar_small.json", "configs/fashion_mnist.json", "configs/demo.json",
                           "configs/bench.json", "configs/fashion_mnist_cond.json"};
    for (int i = 0; i < 6; i++) {
        config_defaults(&c); /* each file over the defaults, not over the previous file */
        rc = config_load(&c, files[i]);
        T_OK(rc == 0, "%s loads (%s)", files[i], rc ? err_msg() : "ok");
    }
    /* a key one file leaves out must come from the defaults, whatever was loaded before:
     * demo.json sets lr_decay cosine and ema_warmup, cifar.json does not */
    Config fresh, after;
    config_defaults(&fresh);
    config_load(&fresh, "configs/cifar.json");
    config_defaults(&after);
    config_load(&after, "configs/demo.json");
    config_defaults(&after);
    config_load(&after, "configs/cifar.json");
    T_OK(!memcmp(&fresh, &after, sizeof fresh) && !strcmp(after.train.lr_decay, "none") && !after.train.ema_warmup,
         "configs/cifar.json after demo.json: lr_decay \"%s\", ema_warmup %d (defaults none, 0)", after.train.lr_decay,
         after.train.ema_warmup);
    config_defaults(&c);
    config_load(&c, "configs/cifar.json");
    T_OK(c.model.ch == 128 && c.model.n_levels == 4 && c.model.ch_mult[3] == 2 && c.model.num_res_blocks == 2 &&
             c.model.n_attn == 1 && c.model.attn_res[0] == 16 && fabsf(c.model.dropout - 0.1f) < 1e-7 &&
             c.diffusion.T == 1000 && fabsf(c.diffusion.beta_start - 1e-4f) < 1e-10 && fabsf(c.diffusion.beta_end - 0.02f) < 1e-9 &&
             fabsf(c.train.lr - 2e-4f) < 1e-10 && c.train.warmup == 5000 && c.train.batch_size == 128 &&
             fabsf(c.train.ema_decay - 0.9999f) < 1e-7 && c.data.hflip && fabsf(c.train.grad_clip - 1) < 1e-7,
         "configs/cifar.json holds Ho et al.'s CIFAR-10 settings");
    return t_done();
}
