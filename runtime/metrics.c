#include "runtime/metrics.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "runtime/base/timer.h"

moe_status moe_metrics_open(moe_metrics *mt, const char *run_dir, long total_steps, int append)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    memset(mt, 0, sizeof *mt);
    mt->jsonl = fopen(path, append ? "a" : "w");
    if (!mt->jsonl)
        return moe_fail(MOE_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    mt->tty = isatty(STDERR_FILENO);
    mt->total_steps = total_steps;
    mt->last_val_loss = -1;
    mt->run_start = moe_now();
    mt->first_step = -1;
    return MOE_OK;
}

static moe_status flush_line(moe_metrics *mt)
{
    if (fflush(mt->jsonl) != 0 || ferror(mt->jsonl))
        return moe_fail(MOE_ERR_IO, "writing metrics.jsonl: %s", strerror(errno));
    return MOE_OK;
}

static void format_eta(char *buf, size_t cap, double s)
{
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, cap, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else
        snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
}

moe_status moe_metrics_train(moe_metrics *mt, const moe_train_metrics *r, int print)
{
    fprintf(mt->jsonl,
            "{\"step\": %ld, \"loss\": %.6f, \"aux_loss\": %.6f, \"z_loss\": %.6f, \"lr\": %.6e, "
            "\"grad_norm\": %.6f, \"tokens_per_s\": %.1f, \"tflops\": %.4f, \"mfu\": %.4f, "
            "\"load_imbalance\": %.4f, \"dropped_frac\": %.6f, \"step_ms\": %.2f}\n",
            r->step, r->loss, r->aux_loss, r->z_loss, r->lr, r->grad_norm, r->tokens_per_s, r->tflops,
            r->mfu, r->load_imbalance, r->dropped_frac, r->step_ms);
    MOE_TRY(flush_line(mt));
    if (mt->first_step < 0) {
        mt->first_step = r->step - 1;
        mt->run_start = moe_now() - r->step_ms / 1e3;
    }
    if (!print)
        return MOE_OK;
    double elapsed = moe_now() - mt->run_start;
    long done = r->step - mt->first_step;
    char eta[32], val[32] = "";
    format_eta(eta, sizeof eta, done > 0 ? elapsed / done * (double)(mt->total_steps - r->step) : 0);
    if (mt->last_val_loss >= 0)
        snprintf(val, sizeof val, " | val %.4f", mt->last_val_loss);
    fprintf(stderr, "%sstep %ld/%ld | loss %.4f%s | lr %.2e | gnorm %.3f | %.0f tok/s | MFU %.1f%% | imb %.2f | ETA %s%s",
            mt->tty ? "\r\033[K" : "", r->step, mt->total_steps, r->loss, val, r->lr, r->grad_norm,
            r->tokens_per_s, 100.0 * r->mfu, r->load_imbalance, eta, mt->tty ? "" : "\n");
    fflush(stderr);
    return MOE_OK;
}

moe_status moe_metrics_eval(moe_metrics *mt, long step, double val_loss)
{
    mt->last_val_loss = val_loss;
    fprintf(mt->jsonl, "{\"step\": %ld, \"val_loss\": %.6f}\n", step, val_loss);
    return flush_line(mt);
}

void moe_metrics_close(moe_metrics *mt)
{
    if (mt->tty)
        fputc('\n', stderr);
    if (mt->jsonl)
        fclose(mt->jsonl);
    mt->jsonl = NULL;
}
