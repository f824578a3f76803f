// comet.mjs: comet.js as an ES module. comet.js is a classic script that
// sets globalThis.Comet; importing it here runs it once.
import "./comet.js";
export default globalThis.Comet;
