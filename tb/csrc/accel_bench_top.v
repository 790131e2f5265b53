// Bench top of the accelerator (tb/accel_bench.py, tb/csrc/accel_bench.cpp): the Amaranth top with
// an internal power-on reset (4 cycles).  Amaranth applies its synchronous reset in the next-state
// logic of every register; with `rst` a top-level input, Verilator evaluates all of that logic in its
// input-combinational region on every eval() call, i.e. twice per clock cycle.  Driven by a register
// here, it is evaluated once per clock edge (about twice the simulation speed).  The ports are the
// accelerator's, without `rst`.
module accel_bench_top #(parameter BUS_BITS = 512) (
  input clk,
  input start, input resume, input [31:0] desc_addr,
  output busy, output done, output paused, output irq, output [7:0] error, output [15:0] layer_index,
  output layer_done,
  output [31:0] m_axi_araddr, output [7:0] m_axi_arlen, output [2:0] m_axi_arsize, output [1:0] m_axi_arburst,
  output m_axi_arvalid, input m_axi_arready,
  input [BUS_BITS-1:0] m_axi_rdata, input [1:0] m_axi_rresp, input m_axi_rlast, input m_axi_rvalid,
  output m_axi_rready,
  output [31:0] m_axi_awaddr, output [7:0] m_axi_awlen, output [2:0] m_axi_awsize, output [1:0] m_axi_awburst,
  output m_axi_awvalid, input m_axi_awready,
  output [BUS_BITS-1:0] m_axi_wdata, output [BUS_BITS/8-1:0] m_axi_wstrb, output m_axi_wlast,
  output m_axi_wvalid, input m_axi_wready,
  input [1:0] m_axi_bresp, input m_axi_bvalid, output m_axi_bready
);
  reg [2:0] rst_count = 3'd0;
  wire rst = ~rst_count[2];
  always @(posedge clk) if (rst) rst_count <= rst_count + 3'd1;
  accelerator dut (.clk(clk), .rst(rst), .start(start), .resume(resume), .desc_addr(desc_addr), .busy(busy),
    .done(done), .paused(paused), .irq(irq), .error(error), .layer_index(layer_index), .layer_done(layer_done),
    .m_axi_araddr(m_axi_araddr), .m_axi_arlen(m_axi_arlen), .m_axi_arsize(m_axi_arsize),
    .m_axi_arburst(m_axi_arburst), .m_axi_arvalid(m_axi_arvalid), .m_axi_arready(m_axi_arready),
    .m_axi_rdata(m_axi_rdata), .m_axi_rresp(m_axi_rresp), .m_axi_rlast(m_axi_rlast), .m_axi_rvalid(m_axi_rvalid),
    .m_axi_rready(m_axi_rready), .m_axi_awaddr(m_axi_awaddr), .m_axi_awlen(m_axi_awlen),
    .m_axi_awsize(m_axi_awsize), .m_axi_awburst(m_axi_awburst), .m_axi_awvalid(m_axi_awvalid),
    .m_axi_awready(m_axi_awready), .m_axi_wdata(m_axi_wdata), .m_axi_wstrb(m_axi_wstrb), .m_axi_wlast(m_axi_wlast),
    .m_axi_wvalid(m_axi_wvalid), .m_axi_wready(m_axi_wready), .m_axi_bresp(m_axi_bresp),
    .m_axi_bvalid(m_axi_bvalid), .m_axi_bready(m_axi_bready));
endmodule
