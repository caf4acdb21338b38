/* forward.c — the smallest complete C program over dsv4's C ABI: load a model, run a prompt, decode a few tokens
 * greedily, roll one back. Build against an installed dsv4:
 *     cc -std=c11 forward.c $(pkg-config --cflags --libs dsv4) -o forward && ./forward /tmp/small
 */
#include <dsv4/c_api.h>

#include <stdio.h>
#include <stdlib.h>

#define CHECK(call)                                                   \
  do {                                                                \
    if ((call) != DSV4_OK) {                                          \
      fprintf(stderr, "%s failed: %s\n", #call, dsv4_last_error());   \
      return 1;                                                       \
    }                                                                 \
  } while (0)

/* A float32 [rows, cols] CPU DLTensor over caller memory. */
static DLTensor matrix(float* data, int64_t* shape) {
  DLTensor t = {0};
  t.data = data;
  t.device.device_type = kDLCPU;
  t.ndim = 2;
  t.dtype.code = kDLFloat;
  t.dtype.bits = 32;
  t.dtype.lanes = 1;
  t.shape = shape;
  return t;
}

static int64_t argmax(const float* l, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (l[i] > l[best]) best = i;
  return best;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
    return 2;
  }
  dsv4_model* model = NULL;
  CHECK(dsv4_model_open(argv[1], NULL, &model));
  dsv4_model_info info;
  CHECK(dsv4_model_info_get(model, &info));
  dsv4_sequence* seq = NULL;
  CHECK(dsv4_sequence_new(model, 256, &seq));

  const int64_t prompt[4] = {5, 17, 301 % info.vocab_size, 9};
  float* logits = malloc(sizeof(float) * 4 * (size_t)info.vocab_size);
  int64_t shape[2] = {4, info.vocab_size};
  DLTensor lt = matrix(logits, shape);
  CHECK(dsv4_forward(model, seq, prompt, 4, &lt));
  int64_t next = argmax(logits + 3 * info.vocab_size, info.vocab_size);
  printf("dsv4 %s: %lld layers, vocab %lld; after the prompt the next token is %lld\n", dsv4_version(),
         (long long)info.n_layers, (long long)info.vocab_size, (long long)next);

  int64_t one[2] = {1, info.vocab_size};
  DLTensor lo = matrix(logits, one);
  for (int step = 0; step < 5; ++step) {
    CHECK(dsv4_forward(model, seq, &next, 1, &lo));
    next = argmax(logits, info.vocab_size);
    printf("  step %d -> %lld\n", step, (long long)next);
  }
  int64_t pos = 0;
  CHECK(dsv4_sequence_truncate(seq, 6));
  CHECK(dsv4_sequence_pos(seq, &pos));
  printf("rolled back to position %lld\n", (long long)pos);

  /* Errors are status codes with a message, never a crash. */
  if (dsv4_forward(model, seq, &next, 1, &lt) != DSV4_OK) printf("expected error: %s\n", dsv4_last_error());

  free(logits);
  dsv4_sequence_free(seq);
  dsv4_model_close(model);
  return 0;
}
