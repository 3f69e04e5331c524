/* Qamqor kiosk: on-screen keypad, idle reset, hall display polling. No dependencies. */
(function () {
  "use strict";

  // On-screen keypad: digits go into the form's display field.
  document.querySelectorAll("form[data-keypad]").forEach(function (form) {
    var display = form.querySelector(".k-display");
    var max = parseInt(display.getAttribute("data-maxlength") || "12", 10);
    form.querySelectorAll("[data-key]").forEach(function (button) {
      button.addEventListener("click", function () {
        var key = button.getAttribute("data-key");
        if (key === "back") {
          display.value = display.value.slice(0, -1);
        } else if (key === "clear") {
          display.value = "";
        } else if (display.value.length < max) {
          display.value += key;
        }
      });
    });
  });

  // Idle reset: a screen left alone goes back to the start; the session ends on the server.
  // A deadline, not one long timer: whatever held the page up (a print dialog, a sleeping
  // screen) the first check after it sees that the time is over and leaves at once.
  var body = document.body;
  var idleSeconds = parseInt(body.getAttribute("data-idle-seconds") || "0", 10);
  var idleUrl = body.getAttribute("data-idle-url");
  if (idleSeconds > 0 && idleUrl) {
    var deadline = 0;
    var leaving = false;
    var touched = function () { deadline = Date.now() + idleSeconds * 1000; };
    var check = function () {
      if (leaving || Date.now() < deadline) { return; }
      leaving = true;
      // Hide everything at once, then leave: nothing personal stays on screen.
      document.getElementById("main").replaceChildren();
      window.location.replace(idleUrl);
    };
    ["pointerdown", "keydown", "touchstart"].forEach(function (name) {
      document.addEventListener(name, touched, { passive: true });
    });
    ["focus", "afterprint", "pageshow"].forEach(function (name) {
      window.addEventListener(name, check);
    });
    document.addEventListener("visibilitychange", check);
    touched();
    window.setInterval(check, 1000);
  }

  // Printing the ticket: the link loads the receipt into the hidden print frame (which prints
  // itself); the screen says so and stays.
  document.querySelectorAll("[data-print]").forEach(function (link) {
    link.addEventListener("click", function () {
      var note = document.querySelector("[data-print-status]");
      if (note) { note.hidden = false; }
    });
  });

  // Hall display: called tickets, polled every three seconds.
  var hallUrl = body.getAttribute("data-hall");
  if (hallUrl) {
    var list = document.getElementById("called-list");
    var waiting = document.getElementById("waiting-count");
    var last = "";
    var poll = function () {
      fetch(hallUrl, { credentials: "same-origin", cache: "no-store" })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (data) {
          if (!data) { return; }
          waiting.textContent = String(data.waiting);
          var signature = JSON.stringify(data.called);
          if (signature === last) { return; }
          last = signature;
          list.replaceChildren();
          data.called.forEach(function (ticket, index) {
            var item = document.createElement("li");
            item.className = index === 0 ? "k-hall-item k-hall-latest" : "k-hall-item";
            var code = document.createElement("span");
            code.className = "k-hall-code";
            code.textContent = ticket.code;
            var room = document.createElement("span");
            room.className = "k-hall-room";
            room.textContent = ticket.room;
            item.append(code, room);
            list.appendChild(item);
          });
        })
        .catch(function () { /* the next poll tries again */ });
    };
    poll();
    window.setInterval(poll, 3000);
  }
})();
