// Fast bench of the vitaccel accelerator top (hw/accelerator.py): a Verilator model driven by this
// C++ main, with the memory behind the AXI4 port modelled here (tb/accel_bench.py builds and runs it).
//
// Memory model (the timing sim/accelerator.py assumes):
//   * read: a read address is accepted in any cycle (queue of 64 bursts); the first data beat of a
//     burst whose address was accepted in cycle t is presented in cycle t + LATENCY, later beats one
//     per cycle, bursts back to back in order;
//   * write: address and data are accepted in every cycle (single-beat bursts; the address must come
//     with or before its data); the write response follows WRITE_RESPONSE cycles after the data.
// Everything the bench measures comes from the port: every read burst, every write (address, bytes
// by strobe) and every layer_done pulse is logged with its cycle to --log.
//
// Usage: accel_bench --image IMG.bin --mem-bytes N --desc ADDR --out MEM.bin --log LOG.txt
//                    [--latency L] [--max-cycles N] [--waves FILE --wave-layer K] [--quiet]
#include <chrono>
#include <ctime>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "Vaccelerator.h"
#include "verilated.h"
#if VM_TRACE
#if VM_TRACE_FST
#include "verilated_fst_c.h"
typedef VerilatedFstC Tracer;
#else
#include "verilated_vcd_c.h"
typedef VerilatedVcdC Tracer;
#endif
#endif

#ifndef BUS_BITS
#error "compile with -DBUS_BITS=<bus width>"
#endif
static const int BB = BUS_BITS / 8;           // bytes per bus word
static const int WRITE_RESPONSE = 1;
static const size_t AR_QUEUE = 64;

template <typename T> static inline uint32_t w32(const T& v, int i) {
    return i == 0 ? (uint32_t)(uint64_t)v : (i == 1 ? (uint32_t)((uint64_t)v >> 32) : 0u);
}
template <std::size_t N> static inline uint32_t w32(const VlWide<N>& v, int i) { return v[i]; }

struct ReadBurst { uint64_t addr; uint32_t len; uint64_t ready; uint32_t beat; };

static void usage() {
    std::fprintf(stderr, "usage: accel_bench --image F --mem-bytes N --desc A --out F --log F [--latency L] "
                         "[--max-cycles N] [--waves F --wave-layer K] [--quiet]\n");
    std::exit(2);
}

int main(int argc, char** argv) {
    std::string image, out, logp, waves;
    uint64_t mem_bytes = 0, desc = 0, max_cycles = 2000000000ull;
    int latency = 20, wave_layer = -1;
    bool quiet = false;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() -> const char* { if (i + 1 >= argc) usage(); return argv[++i]; };
        if (a == "--image") image = next();
        else if (a == "--out") out = next();
        else if (a == "--log") logp = next();
        else if (a == "--waves") waves = next();
        else if (a == "--mem-bytes") mem_bytes = std::strtoull(next(), nullptr, 0);
        else if (a == "--desc") desc = std::strtoull(next(), nullptr, 0);
        else if (a == "--latency") latency = std::atoi(next());
        else if (a == "--max-cycles") max_cycles = std::strtoull(next(), nullptr, 0);
        else if (a == "--wave-layer") wave_layer = std::atoi(next());
        else if (a == "--quiet") quiet = true;
        else if (a.rfind("+verilator", 0) == 0) continue;
        else usage();
    }
    if (image.empty() || out.empty() || logp.empty() || mem_bytes == 0 || latency < 1) usage();
    std::vector<uint8_t> mem(mem_bytes, 0);
    {
        FILE* f = std::fopen(image.c_str(), "rb");
        if (!f) { std::fprintf(stderr, "cannot open %s\n", image.c_str()); return 2; }
        size_t n = std::fread(mem.data(), 1, mem_bytes, f);
        std::fclose(f);
        if (!quiet) std::printf("IMAGE %zu bytes\n", n);
    }
    FILE* log = std::fopen(logp.c_str(), "w");
    if (!log) { std::fprintf(stderr, "cannot open %s\n", logp.c_str()); return 2; }

    VerilatedContext* ctx = new VerilatedContext;
    ctx->commandArgs(argc, argv);
    Vaccelerator* top = new Vaccelerator{ctx};
#if VM_TRACE
    Tracer* tfp = nullptr;
    if (!waves.empty()) ctx->traceEverOn(true);
#endif
    std::deque<ReadBurst> rq;
    std::deque<uint64_t> awq, bq;
    uint64_t cycle = 0;
    int status = 0;       // 0 running, 1 done, 2 protocol error, 3 timeout
    bool resume_next = false, pause_seen = false;
    auto t0 = std::chrono::steady_clock::now();
    std::clock_t c0 = std::clock();

    // reset: accel_bench_top.v holds the accelerator in reset for cycles 0 .. 3
    top->start = 0; top->resume = 0; top->desc_addr = (uint32_t)desc;
    for (;;) {
        // ---- memory outputs of this cycle (functions of the model state only)
        top->m_axi_arready = rq.size() < AR_QUEUE;
        bool rvalid = !rq.empty() && cycle >= rq.front().ready;
        top->m_axi_rvalid = rvalid;
        top->m_axi_rresp = 0;
        if (rvalid) {
            ReadBurst& b = rq.front();
            uint64_t a = b.addr + (uint64_t)b.beat * BB;
            for (int i = 0; i < BB / 4; ++i) {
                uint32_t v = 0;
                if (a + 4 * i + 4 <= mem_bytes) std::memcpy(&v, &mem[a + 4 * i], 4);
                top->m_axi_rdata[i] = v;
            }
            top->m_axi_rlast = b.beat == b.len;
        } else {
            top->m_axi_rlast = 0;
        }
        top->m_axi_awready = 1;
        top->m_axi_wready = 1;
        top->m_axi_bvalid = !bq.empty() && cycle >= bq.front();
        top->m_axi_bresp = 0;
        top->start = cycle == 6;
        top->resume = resume_next;   // the host resumes one cycle after it sees a pause
        resume_next = false;

        top->clk = 0;
        top->eval();
        // ---- handshakes of this cycle
        bool ar_hs = top->m_axi_arvalid && top->m_axi_arready;
        bool r_hs = rvalid && top->m_axi_rready;
        bool aw_hs = top->m_axi_awvalid && top->m_axi_awready;
        bool w_hs = top->m_axi_wvalid && top->m_axi_wready;
        bool b_hs = top->m_axi_bvalid && top->m_axi_bready;
        uint64_t araddr = top->m_axi_araddr, arlen = top->m_axi_arlen, awaddr = top->m_axi_awaddr;
        unsigned awlen = top->m_axi_awlen;
        uint32_t wdata[BB / 4], wstrb[(BB + 31) / 32];
        if (w_hs) {
            for (int i = 0; i < BB / 4; ++i) wdata[i] = top->m_axi_wdata[i];
            for (int i = 0; i < (BB + 31) / 32; ++i) wstrb[i] = w32(top->m_axi_wstrb, i);
        }
        if (top->layer_done) {
            std::fprintf(log, "L %llu %u\n", (unsigned long long)cycle, (unsigned)top->layer_index);
            if (!quiet) { std::printf("LAYER %u %llu\n", (unsigned)top->layer_index, (unsigned long long)cycle); std::fflush(stdout); }
        }
        if (top->irq) std::fprintf(log, "I %llu\n", (unsigned long long)cycle);
        bool finished = top->done;
        if (top->paused && !pause_seen) {
            pause_seen = true;
            resume_next = true;
            std::fprintf(log, "P %llu\n", (unsigned long long)cycle + 1);   // cycle of the resume pulse
        }
        if (!top->paused) pause_seen = false;
        if (w_hs) {
            if (awq.empty() && !aw_hs) {
                std::fprintf(stderr, "protocol error: write data without address at cycle %llu\n", (unsigned long long)cycle);
                status = 2;
            }
        }
#if VM_TRACE
        if (!waves.empty()) {
            bool in_layer = top->busy && (int)top->layer_index == wave_layer;
            if (in_layer && !tfp) {
                tfp = new Tracer;
                top->trace(tfp, 99);
                tfp->open(waves.c_str());
            }
            if (tfp && !in_layer) { tfp->close(); delete tfp; tfp = nullptr; waves.clear(); }
            if (tfp) tfp->dump(ctx->time());
        }
#endif
        top->clk = 1;
        top->eval();
        ctx->timeInc(5);
#if VM_TRACE
        if (tfp) tfp->dump(ctx->time());
#endif
        ctx->timeInc(5);

        // ---- memory state update
        if (ar_hs) {
            if ((araddr % BB) || ((araddr & 4095) + (arlen + 1) * BB > 4096) || araddr + (arlen + 1) * BB > mem_bytes) {
                std::fprintf(stderr, "protocol error: read burst addr 0x%llx len %llu (alignment, 4 KiB or range)\n",
                             (unsigned long long)araddr, (unsigned long long)arlen + 1);
                status = 2;
            }
            rq.push_back({araddr, (uint32_t)arlen, cycle + (uint64_t)latency, 0});
            std::fprintf(log, "R %llu %llu %llu\n", (unsigned long long)cycle, (unsigned long long)araddr,
                         (unsigned long long)arlen + 1);
        }
        if (r_hs) {
            ReadBurst& b = rq.front();
            if (b.beat == b.len) rq.pop_front(); else ++b.beat;
        }
        if (aw_hs) {
            if (awlen != 0 || (awaddr % BB) || awaddr + BB > mem_bytes) {
                std::fprintf(stderr, "protocol error: write burst addr 0x%llx len %u\n", (unsigned long long)awaddr,
                             awlen + 1);
                status = 2;
            }
            awq.push_back(awaddr);
        }
        if (w_hs && !awq.empty()) {
            uint64_t a = awq.front();
            awq.pop_front();
            unsigned nbytes = 0;
            int first = -1;
            for (int i = 0; i < BB; ++i) {
                if ((wstrb[i / 32] >> (i % 32)) & 1u) {
                    if (a + i < mem_bytes) mem[a + i] = (uint8_t)(wdata[i / 4] >> (8 * (i % 4)));
                    if (first < 0) first = i;
                    ++nbytes;
                }
            }
            bq.push_back(cycle + WRITE_RESPONSE);
            // address of the first written byte, bytes written (strobes)
            std::fprintf(log, "W %llu %llu %u\n", (unsigned long long)cycle,
                         (unsigned long long)(a + (first < 0 ? 0 : first)), nbytes);
        }
        if (b_hs) bq.pop_front();
        ++cycle;
        if (finished && !status) status = 1;
        if (status) break;
        if (cycle >= max_cycles) { status = 3; break; }
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double cpu = (double)(std::clock() - c0) / CLOCKS_PER_SEC;   // CPU time of this process (the machine is shared)
#if VM_TRACE
    if (tfp) { tfp->close(); delete tfp; }
#endif
    std::fprintf(log, "E %llu %u %u %d\n", (unsigned long long)cycle, (unsigned)top->error, (unsigned)top->layer_index, status);
    std::fclose(log);
    FILE* f = std::fopen(out.c_str(), "wb");
    if (!f) { std::fprintf(stderr, "cannot write %s\n", out.c_str()); return 2; }
    std::fwrite(mem.data(), 1, mem_bytes, f);
    std::fclose(f);
    std::printf("END %d %llu %u %u %.3f %.3f\n", status, (unsigned long long)cycle, (unsigned)top->error,
                (unsigned)top->layer_index, secs, cpu);
    top->final();
    delete top;
    delete ctx;
    return status == 1 ? 0 : 1;
}
