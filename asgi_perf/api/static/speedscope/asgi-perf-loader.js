// asgi_perf's own file, not part of speedscope: it hands speedscope the
// profile embedded in this page (the JSON block #asgi-perf-profile).
//
// speedscope reads "#profileURL=" from the address once, when its script
// starts (right after this one), and fetches that URL. A fetch of /_perf
// would carry no Authorization header, so the embedded JSON becomes a blob:
// URL instead: no second request, and no token in any URL. Other hash
// parameters (view=sandwich, title=...) are kept; once the page has loaded,
// the address is put back as it was.
(function () {
  "use strict";
  var block = document.getElementById("asgi-perf-profile");
  if (!block) {
    return;
  }
  var blob = new Blob([block.textContent], { type: "application/json" });
  var url = URL.createObjectURL(blob);
  var original = window.location.href;
  var params = window.location.hash.replace(/^#/, "").split("&").filter(function (part) {
    var key = part.split("=")[0];
    return part && key !== "profileURL" && key !== "localProfilePath";
  });
  params.unshift("profileURL=" + encodeURIComponent(url));
  window.history.replaceState(window.history.state, "", "#" + params.join("&"));
  window.addEventListener("DOMContentLoaded", function () {
    window.history.replaceState(window.history.state, "", original);
  });
})();
